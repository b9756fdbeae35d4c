"""Which exceptions the CLI reports as an interrupt (one line, exit 130/143) rather than a bug."""

from __future__ import annotations

from dagster._core.errors import DagsterExecutionInterruptedError

from etl.cli import _is_interrupt


def test_an_interrupt_is_one_even_inside_the_router_calls_task_group() -> None:
    assert _is_interrupt(KeyboardInterrupt())
    assert _is_interrupt(DagsterExecutionInterruptedError())
    # SIGINT landing while Router calls run concurrently: their task group wraps it with the calls'
    # own errors (connections cut by the interrupt)
    group = BaseExceptionGroup("calls", [ConnectionResetError(), DagsterExecutionInterruptedError()])
    assert _is_interrupt(BaseExceptionGroup("outer", [group]))
    assert not _is_interrupt(ValueError())
    assert not _is_interrupt(ExceptionGroup("calls", [ValueError(), ConnectionResetError()]))
