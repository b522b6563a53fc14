from finetune.model import embedded
from tests.conftest import ROOT


def test_the_embedded_model_is_a_standard_folder():
    folder = ROOT / embedded.EMBEDDED_DIR
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert embedded.export_embedded(folder) == folder  # idempotent: nothing to do the second time
