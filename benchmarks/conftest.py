"""pytest-benchmark runs of benchmarks/bench_ops.py: medians per (case, backend), printed as ratios."""
import pytest

REFERENCE_BACKENDS = ("eager", "compile")

# {case: {backend: median seconds}}, filled by the benchmark tests of this session.
MEDIANS: dict[str, dict[str, float]] = {}


@pytest.fixture
def record_median():
    def record(benchmark, group, backend):
        MEDIANS.setdefault(group, {})[backend] = benchmark.stats.stats.median

    return record


def pytest_terminal_summary(terminalreporter):
    if not MEDIANS:
        return
    terminalreporter.section("speed-ups (ratios of medians, this run)")
    for group, medians in MEDIANS.items():
        times = ", ".join(f"{backend} {t * 1e3:.2f} ms" for backend, t in medians.items())
        terminalreporter.write_line(f"{group}: {times}")
        for ours in (b for b in medians if b not in REFERENCE_BACKENDS):
            for base in (b for b in REFERENCE_BACKENDS if b in medians):
                terminalreporter.write_line(f"    {base} / {ours} = {medians[base] / medians[ours]:.2f}x")
