"""A deliberately hanging collector, used only by tests (GOLDENHOUR_EXTRA_COLLECTORS=tests.helpers.slow).

It writes a first file, starts a helper that never ends (``sleep``) and records
the helper's PID, so a test can prove the runner stopped it at the budget and
killed only goldenhour's own processes.
"""
from agent.collector import Collector, Scope


def collect(ctx):
    ctx.write_text("before-hang.txt", "written before hanging\n")
    ctx.run(["sleep", "600"], stdout="sleep.out", timeout_s=600)
    ctx.write_text("never.txt", "not reached\n")


COLLECTOR = Collector(name="slow", summary="test-only: hangs until its timeout", scope=Scope.HOST,
                      collect=collect, timeout_s=2, volatility=99)
