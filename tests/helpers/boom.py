"""A collector that raises, used only by tests (GOLDENHOUR_EXTRA_COLLECTORS=tests.helpers.boom)."""
from agent.collector import Collector, Scope


def collect(ctx):
    ctx.write_text("partial.txt", "some evidence before the error\n")
    raise RuntimeError("boom: simulated collector bug")


COLLECTOR = Collector(name="boom", summary="test-only: raises", scope=Scope.HOST, collect=collect,
                      timeout_s=5, volatility=98)
