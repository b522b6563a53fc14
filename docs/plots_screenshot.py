"""A screenshot of the plots a reviewer opens: `dvc plots show` (or `dvc plots diff A B`) in headless Chromium.

DVC's page loads vega, vega-lite and vega-embed from a CDN; this script works offline by taking the same
versions from npm once (kept in .cache/plots/) and handing DVC a page template with them inlined.

    python docs/plots_screenshot.py [--repo DIR] [--rev A --rev B] --out docs/plots.png
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from dvc_render.html import PAGE_HTML
from PIL import Image, ImageChops  # Pillow comes with matplotlib

from finetune.errors import PipelineError

# The versions dvc-render 1.0.2 loads from the CDN (VegaRenderer.SCRIPTS): the code a reviewer's browser runs.
VEGA_PACKAGES = {"vega": "5.20.2", "vega-lite": "5.2.0", "vega-embed": "6.18.2"}
CACHE = Path(__file__).resolve().parents[1] / ".cache" / "plots"
CHROMIUM_NAMES = ("chromium", "chromium-browser")
MIN_INK_PIXELS = 10_000  # fewer non-white pixels is a blank page or an error line; one drawn plot has ~40,000


def vega_scripts(cache: Path = CACHE) -> list[str]:
    """The minified vega, vega-lite and vega-embed builds, from npm tarballs kept in `cache` (fetched once)."""
    tarballs = [cache / f"{name}-{version}.tgz" for name, version in VEGA_PACKAGES.items()]
    if not all(t.is_file() for t in tarballs):
        if shutil.which("npm") is None:
            raise PipelineError("npm is missing and the vega scripts are not cached: install npm: apt-get install npm")
        cache.mkdir(parents=True, exist_ok=True)
        specs = [f"{name}@{version}" for name, version in VEGA_PACKAGES.items()]
        proc = subprocess.run(["npm", "pack", "--silent", *specs], cwd=cache, capture_output=True, text=True)
        if proc.returncode != 0:
            raise PipelineError(f"npm pack {' '.join(specs)} failed: {last_line(proc.stderr)}")
    scripts = []
    for tarball, name in zip(tarballs, VEGA_PACKAGES):
        with tarfile.open(tarball) as tar:  # the file the CDN serves: package.json's "jsdelivr" entry
            scripts.append(tar.extractfile(f"package/build/{name}.min.js").read().decode())
    return scripts


def build_template(scripts: list[str]) -> str:
    """DVC's own page with `scripts` inlined where its CDN script tags would go (`--html-template`)."""
    # `</script` inside the code would end the tag early; `<\/script` means the same in JavaScript.
    escaped = [code.replace("</script", "<\\/script") for code in scripts]
    inline = "\n".join(f"<script>{code}</script>" for code in escaped)
    # Without a {scripts} placeholder DVC adds no CDN tags; {plot_divs} is where it puts the plots.
    return PAGE_HTML.replace("{scripts}", inline)


def render_page(repo: Path, revs: list[str], template: Path, out_dir: Path) -> Path:
    """Run `dvc plots show` (no `revs`) or `dvc plots diff *revs` in `repo` with `template`; returns the page."""
    command = ["plots", "diff", *revs] if revs else ["plots", "show"]
    proc = subprocess.run([sys.executable, "-m", "dvc", *command, "--html-template", str(template),
                           "--out", str(out_dir)], cwd=repo, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PipelineError(f"dvc {' '.join(command)} failed in {repo}: {last_line(proc.stderr)}")
    page = out_dir / "index.html"
    if not page.is_file():
        raise PipelineError(f"dvc {' '.join(command)} found no plots in {repo}: "
                            "is it a DVC repo, and has `dvc repro` made the plot files?")
    return page


def chromium(page: Path, profile: Path, *flags: str) -> str:
    """Run headless Chromium on `page` with `flags`; returns its stdout."""
    binary = next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    if binary is None:
        raise PipelineError("chromium is missing: install chromium: apt-get install chromium")
    # The virtual time budget lets vega finish drawing before Chromium captures; root needs --no-sandbox.
    proc = subprocess.run([binary, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                           f"--user-data-dir={profile}", "--virtual-time-budget=10000", *flags, page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise PipelineError(f"chromium failed on {page}: {last_line(proc.stderr)}")
    return proc.stdout


def plot_ids(page_html: str) -> list[str]:
    """The ids of the plot containers in DVC's page, in page order."""
    return re.findall(r"vegaEmbed\('#([^']+)'", page_html)


def charts_not_drawn(page_html: str, dom: str) -> list[str]:
    """The ids of the plots in DVC's `page_html` whose container in the rendered `dom` holds no svg or canvas."""
    ids = plot_ids(page_html)
    # DVC's plot containers are siblings, so each one's content runs up to where the next one starts.
    starts = [dom.find(f'id="{plot}"') for plot in ids] + [len(dom)]
    return [plot for plot, start, end in zip(ids, starts, starts[1:])
            if start < 0 or not re.search(r"<(svg|canvas)\b", dom[start:end])]


def crop_to_plots(png: Path) -> Image.Image:
    """The screenshot cut to its non-white part; an error if it is blank or the plots run off the window."""
    image = Image.open(png).convert("RGB")
    distance = ImageChops.difference(image, Image.new("RGB", image.size, "white")).convert("L")
    ink = distance.point(lambda v: 255 * (v > 16))  # anti-aliasing leaves near-white pixels at the edges
    if ink.histogram()[255] < MIN_INK_PIXELS:
        raise PipelineError("the screenshot is blank: the plots did not render (the vega scripts failed?)")
    left, top, right, bottom = ink.getbbox()
    if right >= image.width or bottom >= image.height:
        raise PipelineError(f"the plots run off the {image.width}x{image.height} window: pass a larger --window-size")
    margin = 16
    return image.crop((max(left - margin, 0), max(top - margin, 0), right + margin, bottom + margin))


def screenshot(repo: Path, revs: list[str], out: Path, window: str) -> list[str]:
    """Render the plots of `repo` (at `revs`, or the workspace) to the PNG `out`; returns the ids of the plots shown."""
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        template = work / "template.html"
        template.write_text(build_template(vega_scripts()), encoding="utf8")
        page = render_page(repo, revs, template, work / "plots")
        page_html = page.read_text(encoding="utf8")
        dom = chromium(page, work / "profile", "--dump-dom")
        if missing := charts_not_drawn(page_html, dom):
            raise PipelineError(f"these plots did not render in Chromium: {', '.join(missing)}")
        chromium(page, work / "profile", f"--window-size={window}", f"--screenshot={work / 'page.png'}")
        image = crop_to_plots(work / "page.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".tmp")
    image.save(partial, format="PNG")
    os.replace(partial, out)  # written whole, then renamed: never a half-written PNG
    return plot_ids(page_html)


def last_line(text: str) -> str:
    """The last non-empty line of a command's output: where the tools put the reason they failed."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no output)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path.cwd(), help="the DVC repo to render (default: here)")
    parser.add_argument("--rev", action="append", default=[], help="a revision for `dvc plots diff`; repeat for two")
    parser.add_argument("--out", type=Path, default=Path("docs/plots.png"), help="the PNG to write")
    parser.add_argument("--window-size", default="1200,2400",
                        help="Chromium's window as W,H pixels: large enough for every plot, the PNG is cropped to them")
    args = parser.parse_args()
    plots = screenshot(args.repo.resolve(), args.rev, args.out, args.window_size)
    print(f"{args.out}: {len(plots)} plots ({', '.join(plots)})")


if __name__ == "__main__":
    from finetune.stage import run

    run(main)
