"""The shipped sample layouts are the ones the tests' layout builder makes, and documented."""

from __future__ import annotations

from pathlib import Path

from tests.demo_samples import SAMPLES

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "simulator" / "samples"


def test_shipped_samples_equal_the_generated_ones() -> None:
    """Each file in simulator/samples is exactly what `python -m tests.demo_samples` writes."""
    assert sorted(p.name for p in FOLDER.iterdir()) == sorted(SAMPLES)
    for name, (_, data) in SAMPLES.items():
        assert (FOLDER / name).read_bytes() == data, name


def test_the_readme_lists_every_sample_and_steering_key() -> None:
    """The README names each sample and each key the simulator understands."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in SAMPLES:
        assert f"simulator/samples/{name}" in readme, name
    header = (ROOT / "simulator" / "precheck.py").read_text(encoding="utf-8")
    keys = ("fail", "deferred", "magic", "sleep", "step_sleep", "lines", "oom", "hang", "exit")
    markers = ("drc_at", "density", "antenna", "antenna_at", "zeroarea", "zeroarea_at", "magic_at")
    for key in (*keys, *markers, "oom_step", "oom_flow"):
        assert f"{key})" in header, key  # the simulator parses it
        assert f"`{key}" in readme, key
