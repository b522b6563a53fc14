"""docs/plots_screenshot.py: the offline page template, the blank-page checks, a real screenshot of a tiny run."""

from __future__ import annotations

import shutil

import pytest
from dvc_render.vega import VegaRenderer
from PIL import Image

from docs.plots_screenshot import (CHROMIUM_NAMES, MIN_INK_PIXELS, VEGA_PACKAGES, build_template, charts_not_drawn,
                                   crop_to_plots, screenshot)
from finetune.errors import PipelineError
from tests.tiny_pipeline import clone


def test_the_template_inlines_the_three_scripts_and_keeps_the_plots_placeholder():
    template = build_template(["var vega = 1;", "var vegaLite = 2;", "var vegaEmbed = '</script>';"])
    assert "{plot_divs}" in template
    assert "<script>var vega = 1;</script>" in template and "<script>var vegaLite = 2;</script>" in template
    assert "<script>var vegaEmbed = '<\\/script>';</script>" in template  # the tag is not closed early
    assert "{scripts}" not in template  # else DVC puts its CDN tags back
    assert "cdn.jsdelivr.net" not in template and "<script src" not in template


def test_the_pinned_vega_versions_are_the_ones_dvc_render_loads():
    for name, version in VEGA_PACKAGES.items():
        assert f'/npm/{name}@{version}"' in VegaRenderer.SCRIPTS


def test_a_plot_whose_container_holds_no_chart_is_named():
    page = "vegaEmbed('#loss', spec); vegaEmbed('#confusion', spec);"
    dom = '<div id="loss" class="vega-embed"><canvas></canvas></div><div id="confusion" class="vega-embed"></div>'
    assert charts_not_drawn(page, dom) == ["confusion"]


def test_a_blank_screenshot_is_an_error(tmp_path):
    Image.new("RGB", (400, 300), "white").save(tmp_path / "blank.png")
    with pytest.raises(PipelineError, match="blank"):
        crop_to_plots(tmp_path / "blank.png")


HAS_BROWSER_AND_NPM = shutil.which("npm") and any(map(shutil.which, CHROMIUM_NAMES))


@pytest.mark.skipif(not HAS_BROWSER_AND_NPM, reason="needs chromium and npm")
def test_the_tiny_pipeline_plots_render_in_chromium(tmp_path, tiny_pipeline):
    repo = clone(tiny_pipeline, tmp_path / "repo")
    plots = screenshot(repo, [], tmp_path / "plots.png", "1200,3000")  # raises if a chart is not drawn
    assert plots == ["Examples_per_class__prepare_", "Fine-tuned_model__test_split", "Base_model__test_split",
                     "Training_loss__one_point_per_log_", "Learning_rate"]
    not_white = sum(Image.open(tmp_path / "plots.png").convert("L").histogram()[:239])
    assert not_white > 5 * MIN_INK_PIXELS  # ink for five plots, not a blank page
