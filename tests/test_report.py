"""`knn report`: a study folder written out as report.md and a self-contained report.html, every
number in its tables read back and found in the run folder it came from."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_fake_cifar
from study_folder import build_study, set_statuses

from knn_cli.cli import cli
from knn_cli.errors import RunFolderError
from knn_cli.study.folder import start_study
from knn_cli.study.parts import PART_NAMES
from knn_cli.study.published import (
    Published,
    check,
    parse_published,
    published_numbers,
    published_sources,
)
from knn_cli.study.report import write_report
from knn_cli.study.settings import StudySettings

SECTIONS = (
    "Where the reproduction agrees, and where not",
    "1. Gradient check",
    "2. The four configs",
    "3. Lambda search",
    "4. Sensitivity to initialization",
    "What ran",
)


@pytest.fixture(scope="session")
def built_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A whole quick study on tiny data (`knn study --quick`), built once: about half a minute
    of training."""
    root = tmp_path_factory.mktemp("study")
    data = write_fake_cifar(root / "cifar", n_per_batch=60)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KNN_CACHE_DIR", str(root / "cache"))
        patch.delenv("KNN_DATA_DIR", raising=False)
        return build_study(root / "runs", data)


@pytest.fixture(scope="session")
def reported(built_study: Path) -> Path:
    """The study with its report written, for the tests that only read it."""
    write_report(built_study)
    return built_study


@pytest.fixture
def study_copy(built_study: Path, tmp_path: Path) -> Path:
    """A copy of the study a test may take apart."""
    return Path(shutil.copytree(built_study, tmp_path / built_study.name))


# -- reading the report back ----------------------------------------------------------------------


def section(markdown: str, title: str) -> str:
    """The text under the `## title...` heading, up to the next one."""
    parts = re.split(r"^## ", markdown, flags=re.M)
    (found,) = [p for p in parts if p.startswith(title)]
    return found


def tables(text: str) -> list[list[dict[str, str]]]:
    """Every Markdown table in `text`, as rows keyed by header."""
    found = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line for line in block.splitlines() if line.startswith("|")]
        if len(lines) < 2 or len(lines) != len(block.strip().splitlines()):
            continue
        cells = [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in lines]
        headers, rows = cells[0], cells[2:]
        found.append([dict(zip(headers, row, strict=True)) for row in rows])
    return found


def table_with(text: str, header: str) -> list[dict[str, str]]:
    (found,) = [t for t in tables(text) if t and header in t[0]]
    return found


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def pct(value: str) -> str:
    return f"{100 * float(value):.2f}%"


def mean_sd(values: list[str]) -> str:
    numbers = [float(v) for v in values]
    return f"{100 * np.mean(numbers):.2f}% +- {100 * np.std(numbers, ddof=1):.2f}"


# -- the report -----------------------------------------------------------------------------------


def test_every_section_is_there_in_both_files(reported: Path) -> None:
    markdown = (reported / "report.md").read_text()
    page = (reported / "report.html").read_text()
    for title in SECTIONS:
        assert re.search(rf"^## {re.escape(title)}", markdown, flags=re.M), title
        assert f"<h2>{title}" in page, title
    # A quick study says so before anything else.
    first_lines = markdown.splitlines()[:4]
    assert any("Quick study" in line and "not the study's" in line for line in first_lines)


def test_gradient_check_numbers_are_the_csv_ones(reported: Path) -> None:
    rows = table_with(section((reported / "report.md").read_text(), "1."), "worst abs error")
    assert {row["layers"] for row in rows} == {"k=2", "k=3", "k=4", "k=9"}
    for row in rows:
        csv_rows = [
            r
            for r in read_csv(reported / "gradcheck" / f"k{row['layers'][2:]}" / "gradcheck.csv")
            if r["variant"] == row["variant"]
        ]
        assert row["parameters"] == str(len(csv_rows))
        assert float(row["worst abs error"]) == max(float(r["max abs error"]) for r in csv_rows)
        assert row["worst abs error"] in {r["max abs error"] for r in csv_rows}
        assert float(row["worst rel error"]) == max(float(r["max rel error"]) for r in csv_rows)
        assert row["result"] == "pass"
        assert row["ours against published"] == "inside"  # float64 errors are ~1e-10
    assert len(rows) == 4 * 3  # each depth without BN, BN before and after the ReLU


def test_config_numbers_are_the_results_csv_ones(reported: Path) -> None:
    rows = table_with(section((reported / "report.md").read_text(), "2."), "each seed")
    results = read_csv(reported / "configs" / "results.csv")
    assert [row["config"] for row in rows] == ["3layer", "3layer_bn", "9layer", "9layer_bn"]
    for row in rows:
        runs = [r for r in results if r["config"] == row["config"]]
        assert row["seeds"] == ", ".join(r["seed"] for r in runs) == "0, 1"
        assert row["each seed"] == ", ".join(pct(r["test_accuracy"]) for r in runs)
        assert row["mean +- sd"] == mean_sd([r["test_accuracy"] for r in runs])


def test_verdicts_follow_from_the_published_numbers(reported: Path) -> None:
    """Each config's verdict, worked out here from its own row: inside the range, or the
    distance in points to its nearer edge, within two standard deviations of the seeds or
    not."""
    rows = table_with(section((reported / "report.md").read_text(), "2."), "each seed")
    for row in rows:
        low, high = (
            float(v) for v in re.match(r"([\d.]+)-([\d.]+)%", row["published range"]).groups()
        )
        mean, sd = (float(v) for v in row["mean +- sd"].replace("%", "").split(" +- "))
        if low <= mean <= high:
            expected = "inside"
        else:
            miss = f"below by {low - mean:.2f}" if mean < low else f"above by {mean - high:.2f}"
            within = min(abs(low - mean), abs(mean - high)) <= 2 * sd
            kind = "outside, but within the seed spread" if within else (
                "outside by more than two standard deviations"
            )  # fmt: skip
            expected = f"{kind} ({miss} points; 2 sd = {2 * sd:.2f}; "
        assert row["ours against published"].startswith(expected)
        each = [float(v) for v in row["each seed"].replace("%", "").split(", ")]
        inside = sum(low <= v <= high for v in each)
        assert row["ours against published"].endswith(f"{inside} of {len(each)} seeds inside)")
    summary = table_with(section((reported / "report.md").read_text(), "Where"), "ours")
    by_what = {row["what"]: row for row in summary}
    assert by_what["3 layers, no BN, test accuracy"]["ours"] == rows[0]["mean +- sd"]
    assert by_what["9 layers, BN, test accuracy"]["ours"] == rows[3]["mean +- sd"]


def test_lambda_search_numbers_are_the_trials_csv_ones(reported: Path) -> None:
    text = section((reported / "report.md").read_text(), "3.")
    trials = {r["index"]: r for r in read_csv(reported / "lambda-search" / "trials.csv")}
    search = table_with(text, "the study, nearest lambda")
    assert len(search) == sum(r["stage"] != "final" for r in trials.values())
    for row in search:
        trial = trials[row["trial"]]
        assert row["stage"] == trial["stage"]
        assert float(row["lambda"]) == pytest.approx(float(trial["lambda"]), rel=5e-3)
        assert row["val accuracy"] == pct(trial["final_val_accuracy"])
    finals = [r for r in trials.values() if r["stage"] == "final"]
    retrains = {row["network"]: row for row in table_with(text, "network")}
    three = retrains["3 layers, BN"]
    assert three["each seed"] == ", ".join(pct(r["test_accuracy"]) for r in finals)
    assert three["mean +- sd"] == mean_sd([r["test_accuracy"] for r in finals])
    nine_runs = read_csv(reported / "lambda-9layer" / "results.csv")
    nine = retrains["9 layers, BN"]
    assert nine["each seed"] == ", ".join(pct(r["test_accuracy"]) for r in nine_runs)
    assert nine["mean +- sd"] == mean_sd([r["test_accuracy"] for r in nine_runs])
    assert float(three["lambda"]) == pytest.approx(float(finals[0]["lambda"]), rel=5e-3)
    outcome = {row["the search"]: row for row in table_with(text, "the search")}
    best = max(float(r["final_val_accuracy"]) for r in trials.values() if r["stage"] != "final")
    assert outcome["best validation accuracy"]["ours"] == f"{100 * best:.2f}%"
    assert outcome["chosen lambda"]["ours"] == three["lambda"]


def test_init_sensitivity_numbers_are_the_results_csv_ones(reported: Path) -> None:
    """A row per cell, with each of the cell's seeds (the study's seeds) and their mean +- sd."""
    rows = table_with(section((reported / "report.md").read_text(), "4."), "sigma")
    results = read_csv(reported / "init-sensitivity" / "results.csv")
    assert len(rows) == 12 and len(results) == 12 * 2  # the quick study's 2 seeds a cell
    for row in rows:
        seeds = [
            r
            for r in results
            if r["depth"] == row["layers"]
            and (r["batch_norm"] == "True") == (row["batch norm"] == "BN")
            and r["sigma"] == row["sigma"]
        ]
        assert row["seeds"] == ", ".join(r["seed"] for r in seeds) == "0, 1"
        assert row["each seed"] == ", ".join(pct(r["test_accuracy"]) for r in seeds)
        assert row["mean +- sd"] == mean_sd([r["test_accuracy"] for r in seeds])


def embedded_pngs(page: str) -> list[bytes]:
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert all(s.startswith("data:image/png;base64,") for s in sources), "a figure not embedded"
    return [base64.b64decode(s.split(",", 1)[1], validate=True) for s in sources]


def test_every_figure_is_embedded_and_decodes_as_an_image(reported: Path) -> None:
    import matplotlib.image

    markdown = (reported / "report.md").read_text()
    pngs = embedded_pngs((reported / "report.html").read_text())
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    # BN against none at 3 and 9 layers, lambda, the grid; what the layers see: gradients by
    # layer, the percentile picture, the landscape; the range tests.
    assert len(pngs) == len(linked) == 8
    for png, link in zip(pngs, linked, strict=True):
        image = matplotlib.image.imread(io.BytesIO(png), format="png")
        height, width = image.shape[:2]
        assert width >= 1200 and height >= 600  # 8 x 4 inches or more, at 150 dpi
        assert (reported / link).read_bytes() == png  # the Markdown's figure is the same one


def test_the_page_needs_nothing_but_itself(reported: Path) -> None:
    page = (reported / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "<link" not in page and "@import" not in page and "<script" not in page
    assert "@media print" in page


def test_the_report_is_the_same_when_written_again(study_copy: Path) -> None:
    """Nothing in it depends on when it was written: a resumed study reports like one that ran
    straight through."""
    first = [path.read_bytes() for path in write_report(study_copy)]
    again = [path.read_bytes() for path in write_report(study_copy)]
    assert first == again


def test_a_half_finished_study_shows_what_exists_and_marks_the_rest(study_copy: Path) -> None:
    shutil.rmtree(study_copy / "init-sensitivity")
    (nine_s1,) = (study_copy / "lambda-9layer").glob("001-*")
    shutil.rmtree(nine_s1)  # the retrain's second seed has not run yet
    set_statuses(study_copy, lambda_9layer="running", init_sensitivity="pending")
    write_report(study_copy)
    markdown = (study_copy / "report.md").read_text()
    assert "not run" in section(markdown, "4.")
    assert "<h2>4. Sensitivity to initialization" in (study_copy / "report.html").read_text()
    assert "This study is not finished" in markdown.split("## ")[0]  # at the top
    retrains = {row["network"]: row for row in table_with(section(markdown, "3."), "network")}
    assert retrains["9 layers, BN"]["each seed"].endswith(", not run")
    assert retrains["3 layers, BN"]["ours against published"] != "not run"
    parts = {row["part"]: row for row in table_with(section(markdown, "What ran"), "part")}
    assert parts["Sensitivity to initialization"]["status"] == "not run"
    assert parts["Lambda search: the 9-layer retrain"]["status"] == "running"
    # What did run is reported as before.
    assert table_with(section(markdown, "2."), "each seed")
    # BN against none at 3 and 9 layers, lambda; and from the configs' 9-layer runs what their
    # layers saw (gradients by layer, the percentile picture, the landscape), the range tests:
    # not the grid's.
    assert len(embedded_pngs((study_copy / "report.html").read_text())) == 7


def test_a_study_with_no_part_run_is_still_a_report(tmp_path: Path) -> None:
    study = start_study(tmp_path, StudySettings(), data="nowhere yet")
    markdown = write_report(study)[0].read_text()
    for title in SECTIONS[1:5]:
        assert "not run" in section(markdown, title)
    assert "Quick study" not in markdown


@pytest.mark.parametrize("contents", [None, "{}", '{"kind": "sweep", "version": 1}', "{oops"])
def test_a_folder_that_is_no_study_is_a_one_line_error(tmp_path: Path, contents: str | None):
    if contents is not None:
        (tmp_path / "study.json").write_text(contents)
    result = CliRunner().invoke(cli, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
    assert "study" in result.output
    assert not (tmp_path / "report.md").exists() and not (tmp_path / "report.html").exists()
    with pytest.raises(RunFolderError):
        write_report(tmp_path / "missing")


def test_knn_report_prints_the_two_paths(study_copy: Path) -> None:
    result = CliRunner().invoke(cli, ["report", str(study_copy)])
    assert result.exit_code == 0, result.output
    paths = [Path(line) for line in result.output.splitlines()]
    assert [p.name for p in paths] == ["report.md", "report.html"]
    assert all(p.is_file() and p.parent == study_copy for p in paths)


# -- the published numbers ------------------------------------------------------------------------


def test_published_numbers_are_complete_and_well_formed() -> None:
    """Every range spans the solutions it cites (peers.md's, compiled 2026-12-06): those that
    follow the protocol, at least two, and apart every solution reporting the number."""
    numbers, published_tables = published_numbers()
    assert len(numbers) == 21
    assert {entry.part for entry in numbers.values()} <= set(PART_NAMES)
    cited = {key: (entry.range, entry.range_from) for key, entry in numbers.items()}
    assert cited["configs.3layer"] == ((52.57, 53.36), ("1", "5", "7"))
    assert cited["configs.3layer_bn"] == ((52.08, 53.76), ("1", "2", "5", "7"))
    assert cited["configs.9layer"] == ((31.99, 49.43), ("1", "2", "4", "5"))
    assert cited["configs.9layer_bn"] == ((43.76, 51.21), ("1", "2", "4", "5"))
    assert cited["lambda-search.final"] == ((52.87, 54.04), ("2", "4", "5"))
    assert numbers["configs.3layer_bn"].wider == (51.45, 53.95)
    assert len(numbers["configs.3layer_bn"].wider_from) == 8
    # One solution or none follows the protocol: judged against the study's number alone.
    assert cited["lambda-search.best_val_accuracy"] == (None, ())
    assert numbers["lambda-search.best_val_accuracy"].bounds == (55.5, 55.5)
    assert numbers["configs.9layer_bn"].value == 53.6  # the study's own
    cells = [key for key in numbers if key.startswith("init-sensitivity.")]
    assert len(cells) == 12
    assert len(published_tables["lambda-search.trials"].rows) == 14
    sources = published_sources()
    assert list(sources) == ["study", *map(str, range(1, 9))]
    assert sources["3"].who == "alexcosta13/dd2424-deep-learning-in-data-science"


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"range_from": ["1"]}, "two sources that follow the protocol"),
        ({"range_from": ["1", "9"]}, "unknown sources ['9']"),
        ({"range_from": []}, "a range needs its sources"),
        ({"range": [54.0, 53.0]}, "upside down"),
    ],
)
def test_a_published_range_must_cite_what_it_spans(change: dict, fragment: str) -> None:
    entry = {"part": "configs", "what": "x", "unit": "%", "value": 53.0,
             "range": [53.0, 54.0], "range_from": ["1", "2"], **change}  # fmt: skip
    sources = {key: {"who": key, "file": "f", "differs": "-"} for key in ("study", "1", "2")}
    with pytest.raises(ValueError, match=re.escape(fragment)):
        parse_published({"sources": sources, "numbers": {"k": entry}})


def test_no_cited_source_is_lost_to_a_yaml_comment() -> None:
    """In YAML an unquoted ' #5' starts a comment: a note citing a source must be quoted, or the
    report shows it cut short (it once read '50.33-51.21% without')."""
    text = (Path(__file__).resolve().parents[1] / "knn_cli/study/published.yaml").read_text()
    for number, line in enumerate(text.splitlines(), 1):
        before_comment = line.split(" #", 1)[0] if " #" in line else line
        if before_comment.strip() and " #" in line:
            assert before_comment.count('"') % 2 == 1, f"published.yaml:{number}: {line.strip()}"


def test_the_published_file_ships_with_the_package() -> None:
    tomllib = pytest.importorskip("tomllib")
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    package_data = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]
    assert any(
        Path("knn_cli/study/published.yaml").match(f"{package.replace('.', '/')}/{pattern}")
        for package, patterns in package_data.items()
        for pattern in patterns
    )


def test_the_three_verdicts_of_a_result_over_seeds() -> None:
    """Inside; outside by at most two standard deviations of the seeds; outside by more."""
    ranged = Published("k", "configs", "x", "%", 48.0, (52.9, 54.0), ("1", "2"))
    assert check(53.0, ranged, spread=0.4).verdict == "inside"
    near = check(52.3, ranged, spread=0.4)  # 0.6 below, 2 sd = 0.8
    assert near.verdict == "within the seed spread"
    assert near.text() == "outside, but within the seed spread (below by 0.60 points; 2 sd = 0.80)"
    far = check(51.9, ranged, spread=0.4)  # 1.0 below
    assert far.verdict == "outside"
    assert far.text().startswith("outside by more than two standard deviations (below by 1.00")
    assert check(51.9, ranged).verdict == "outside"  # one seed: no spread to be within
    assert check(51.9, ranged).text() == "below by 1.00 points"


def test_check_says_inside_or_by_how_much_it_misses() -> None:
    ranged = Published("k", "configs", "x", "%", 48.0, (52.9, 54.0))
    assert check(53.0, ranged).text() == "inside"
    assert check(52.9, ranged).inside and check(54.0, ranged).inside
    assert check(52.6, ranged).text() == "below by 0.30 points"
    assert check(55.25, ranged).text() == "above by 1.25 points"
    alone = Published("k", "configs", "x", "%", 53.0)  # no range: the study's number alone
    assert check(53.0, alone).inside and check(53.5, alone).text() == "above by 0.50 points"
    lambdas = Published("k", "lambda-search", "x", "lambda", 0.00268, (0.002, 0.007), scale="log")
    assert check(0.0035, lambdas).inside
    assert check(0.001, lambdas).text() == "below by a factor of 2"
    assert check(0.035, lambdas).text() == "above by a factor of 5"


# -- in a browser ---------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
requires_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (Debian: apt-get install chromium)"
)
# After the page has loaded, the body says how many images it has and how many failed to decode.
IMAGE_PROBE = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const broken = images.filter((image) => !image.complete || image.naturalWidth === 0);
  document.body.setAttribute("data-images", images.length);
  document.body.setAttribute("data-broken", broken.length);
});
</script>"""


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    command = [CHROMIUM or "chromium", "--headless", "--disable-gpu", "--no-sandbox",
               "--hide-scrollbars", "--virtual-time-budget=10000", *args]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)


def images_in_browser(page: Path, tmp_path: Path) -> tuple[int, int]:
    """(images, broken images) once Chromium has loaded a copy of `page` with the probe."""
    probe = tmp_path / f"probe-{page.name}"
    probe.write_text(page.read_text().replace("</body>", f"{IMAGE_PROBE}\n</body>"))
    dom = chromium("--dump-dom", probe.as_uri()).stdout
    found = re.search(r'<body data-images="(\d+)" data-broken="(\d+)"', dom)
    assert found, f"the probe did not run: {dom[:300]!r}"
    return int(found.group(1)), int(found.group(2))


@requires_chromium
def test_every_figure_loads_in_chromium(reported: Path, tmp_path: Path) -> None:
    page = reported / "report.html"
    assert images_in_browser(page, tmp_path) == (8, 0)
    # The probe can see a broken figure: one figure's data cut short.
    damaged = tmp_path / "damaged.html"
    text = page.read_text()
    start = text.index("data:image/png;base64,") + len("data:image/png;base64,")
    damaged.write_text(text[:start] + text[start + 2000 :])
    assert images_in_browser(damaged, tmp_path) == (8, 1)


@requires_chromium
def test_the_report_renders_as_a_screenshot(reported: Path, tmp_path: Path) -> None:
    import matplotlib.image

    shot = tmp_path / "report.png"
    chromium(f"--screenshot={shot}", "--window-size=1280,2000", (reported / "report.html").as_uri())
    image = matplotlib.image.imread(shot)
    assert image.shape[:2] == (2000, 1280)
    assert image[..., :3].std() > 0.05  # text and tables, not a blank page


# -- knn study: interrupted, resumed ---------------------------------------------------------------


def without_what_ran(markdown: str) -> str:
    """The report less what differs between two runs of one study: its folder, wall times and
    provenance (the 'What ran' section)."""
    sections = re.split(r"^## ", markdown, flags=re.M)
    kept = [s for s in sections[1:] if not s.startswith("What ran")]
    return "\n".join(kept)


def test_an_interrupted_study_resumes_to_the_report_of_an_uninterrupted_one(
    built_study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import interrupt_at

    data = write_fake_cifar(tmp_path / "cifar", n_per_batch=60)  # the same images
    monkeypatch.setenv("KNN_CACHE_DIR", str(tmp_path / "cache"))
    args = ["study", "--quick", "--workers", "1", "--set", f"data.dir={data}",
            "--set", "data.validation_size=60", "--runs-dir", str(tmp_path / "runs")]  # fmt: skip
    interrupt_at(monkeypatch, 50)  # Ctrl-C half-way through the first config's first run
    stopped = CliRunner().invoke(cli, args)
    assert stopped.exit_code == 130, stopped.output
    assert "1. gradcheck" in stopped.output and "in all on this machine" in stopped.output
    (study,) = (tmp_path / "runs").iterdir()
    parts = json.loads((study / "study.json").read_text())["parts"]
    assert [parts[name]["status"] for name in PART_NAMES[:3]] == [
        "finished",
        "interrupted",
        "pending",
    ]
    assert (study / "configs" / "000-3layer-s0" / "checkpoint.npz").is_file()
    checked = (study / "gradcheck" / "k9" / "summary.json").stat().st_mtime_ns

    monkeypatch.undo()
    monkeypatch.setenv("KNN_CACHE_DIR", str(tmp_path / "cache"))
    refused = CliRunner().invoke(cli, ["study", "--resume", str(study), "--quick"])
    assert refused.exit_code == 2 and "drop --quick" in refused.output
    resumed = CliRunner().invoke(cli, ["study", "--resume", str(study), "--workers", "1"])
    assert resumed.exit_code == 0, resumed.output
    assert "gradcheck: finished before, skipped" in resumed.output
    assert (study / "gradcheck" / "k9" / "summary.json").stat().st_mtime_ns == checked
    assert not (study / "configs" / "000-3layer-s0" / "earlier-attempts").exists()  # continued

    write_report(built_study)
    assert without_what_ran((study / "report.md").read_text()) == without_what_ran(
        (built_study / "report.md").read_text()
    )


def test_knn_study_refuses_a_folder_that_is_no_study_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["study", "--resume", str(tmp_path), "--workers", "1"])
    assert result.exit_code == 2
    assert result.output == f"error: {tmp_path} is not a study folder: it has no study.json\n"


# -- 6. the usable rates -------------------------------------------------------------------------


def test_the_usable_rates_section_is_written_from_the_range_tests(reported: Path) -> None:
    from knn_cli.study.rates import LABELS

    text = section((reported / "report.md").read_text(), "6.")
    rows = {row["network"]: row for row in table_with(text, "learns up to")}
    assert set(rows) == set(LABELS.values())
    for name, label in LABELS.items():
        summary = json.loads(
            (reported / "usable-rates" / f"range-{name}" / "summary.json").read_text()
        )
        learns = (summary["suggested"].get("still_learns") or {}).get("value")
        if learns is not None:  # the table shows the test's own number
            assert rows[label]["learns up to"].startswith(f"{learns:.3g}")
    retrained = json.loads((reported / "usable-rates" / "retrain" / "sweep.json").read_text())
    names = [trial["config"]["name"] for trial in retrained["trials"]]
    assert names.count("3layer_bn-suggested") == 2  # the quick study's seeds
    suggested = json.loads(
        (reported / "usable-rates" / "range-3layer_bn" / "summary.json").read_text()
    )["suggested"]
    trained = retrained["trials"][0]["config"]["training"]
    assert trained["eta_min"] == float(f"{suggested['eta_min']['value']:.3g}")
    assert trained["eta_max"] == float(f"{suggested['eta_max']['value']:.3g}")
    assert "Retrained at its suggested bounds" in text and "with the study's bounds" in text


def test_the_widening_and_the_bounds_are_computed_from_the_suggestions() -> None:
    from knn_cli.range_plots import DrawnTest
    from knn_cli.study.rates import Rates, bounds_sentence, widening_sentence

    def test(learns: float, low: float, high: float) -> DrawnTest:
        suggested = {
            "still_learns": {"value": learns, "low": learns, "high": learns},
            "eta_min": {"value": low, "low": low, "high": low},
            "eta_max": {"value": high, "low": high, "high": high},
        }
        return DrawnTest("", (), {"suggested": suggested})

    rates = Rates(
        {
            "3layer": test(0.5, 1e-3, 0.03),
            "3layer_bn": test(4.0, 1e-3, 0.2),
            "9layer": test(1.0, 2e-3, 0.1),
            "9layer_bn": test(2.5, 1e-3, 0.3),
            "9layer-sigma0.1": None,
        },
        (),
    )
    widening = widening_sentence(rates)
    assert widening is not None
    assert "8.0 times on 3 layers (4 against 0.5)" in widening
    assert "2.5 times on 9 layers (2.5 against 1)" in widening
    bounds = bounds_sentence(rates)
    assert bounds is not None
    factor = "the study's eta_min below it by a factor of 100"
    assert f"3 layers, no BN: suggested [0.001, 0.03], {factor}, its eta_max above" in bounds
    assert f"3 layers, BN: suggested [0.001, 0.2], {factor}, its eta_max inside" in bounds


def test_the_collapse_is_set_against_the_divergence_as_measured() -> None:
    from knn_cli.range_plots import DrawnTest
    from knn_cli.study.rates import Rates, collapse_sentence

    def test(collapse: float, diverges: float | None) -> DrawnTest:
        suggested = {"collapse": {"value": collapse}, "last_stable": {"value": diverges}}
        return DrawnTest("", (), {"suggested": suggested})

    before = collapse_sentence(Rates({"3layer": test(0.7, 56.0), "3layer_bn": test(5.0, None)}, ()))
    assert before is not None and before.startswith("Each stops learning before its loss")
    assert "3 layers, no BN collapses at 0.7, its loss diverging only after 56 (80 times" in before
    assert "3 layers, BN collapses at 5, its loss never diverging" in before
    after = collapse_sentence(Rates({"3layer": test(0.7, 0.5)}, ()))
    assert after is not None and after.startswith("Where each stops learning")
