"""Shared by the benchmarks: medians recorded per (group, implementation), printed as ratios."""
import pytest

# {group: {implementation: median seconds}}, filled by the benchmark tests of this session.
MEDIANS: dict[str, dict[str, float]] = {}


@pytest.fixture
def record_median():
    def record(benchmark, group, impl):
        MEDIANS.setdefault(group, {})[impl] = benchmark.stats.stats.median

    return record


def pytest_terminal_summary(terminalreporter):
    if not MEDIANS:
        return
    terminalreporter.section("speed-ups (ratios of medians, this run)")
    for group, medians in MEDIANS.items():
        times = ", ".join(f"{impl} {t * 1e3:.1f} ms" for impl, t in medians.items())
        terminalreporter.write_line(f"{group}: {times}")
        ours = [impl for impl in medians if impl.startswith("ours")]
        for impl in ours:
            for base in (b for b in medians if not b.startswith("ours")):
                terminalreporter.write_line(f"    {base} / {impl} = {medians[base] / medians[impl]:.2f}x")
