"""search.lockstep: calls of a row-wise function from tasks run side by side are merged into shared
batched calls (chunked to max_rows), give each task exactly its own rows back, never deadlock when tasks make
different numbers of calls, stop everything on a failure, and leave graph-building calls alone."""

import threading

import pytest
import torch

from search.lockstep import LockstepAborted, RowwiseFunction, run_lockstep


class Affine:
    """A row-wise function that records the batch size of every call."""

    def __init__(self):
        self.weight = torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        self.batches = []

    def __call__(self, x, t, *, scale):
        self.batches.append(x.shape[0])
        return x @ self.weight * t[:, None] + scale


def task(fn, rows, calls, seed):
    """Makes ``calls`` calls on ``rows`` rows; returns inputs and outputs (checked against direct calls)."""

    def run():
        g = torch.Generator().manual_seed(seed)
        seen = []
        for _ in range(calls):
            x = torch.randn(rows, 3, generator=g, dtype=torch.float64)
            t = torch.rand(rows, generator=g, dtype=torch.float64)
            s = torch.randn(rows, 1, generator=g, dtype=torch.float64)
            seen.append(((x, t, s), fn(x, t, scale=s)))
        return seen

    return run


def check_outputs(affine, results):
    for seen in results:
        for (x, t, s), out in seen:
            torch.testing.assert_close(out, x @ affine.weight * t[:, None] + s, rtol=1e-12, atol=1e-12)


def test_calls_of_side_by_side_tasks_are_merged_and_each_gets_its_rows():
    affine = Affine()
    fn = RowwiseFunction(affine)
    results = run_lockstep([task(fn, rows, 4, seed) for seed, rows in enumerate((2, 3, 5))])
    check_outputs(affine, results)
    assert affine.batches == [10, 10, 10, 10]  # one call per round on the rows of all three tasks
    assert fn.calls == 4


def test_max_rows_chunks_the_merged_call():
    affine = Affine()
    fn = RowwiseFunction(affine, max_rows=4)
    results = run_lockstep([task(fn, rows, 2, seed) for seed, rows in enumerate((2, 3, 5))])
    check_outputs(affine, results)
    assert affine.batches == [4, 4, 2] * 2


def test_tasks_with_different_numbers_of_calls_finish():
    affine = Affine()
    fn = RowwiseFunction(affine)
    results = run_lockstep([task(fn, 2, calls, seed) for seed, calls in enumerate((1, 5, 3, 0))])
    check_outputs(affine, results)
    assert [len(r) for r in results] == [1, 5, 3, 0]
    assert affine.batches == [6, 4, 4, 2, 2]  # rows of the tasks still running at each round


def test_calls_of_different_functions_or_layouts_run_separately():
    a, b = Affine(), Affine()
    fa, fb = RowwiseFunction(a), RowwiseFunction(b)

    def wide():  # a different per-row shape: not stackable with the others
        return fa(
            torch.ones(2, 3, dtype=torch.float64), torch.ones(2, dtype=torch.float64), scale=torch.zeros(2, 3)
        )

    results = run_lockstep([task(fa, 2, 1, 0), task(fa, 3, 1, 1), task(fb, 4, 1, 2), wide])
    check_outputs(a, results[:2])
    check_outputs(b, [results[2]])
    assert sorted(a.batches) == [2, 5] and b.batches == [4]
    assert results[3].shape == (2, 3) and results[3].dtype == torch.float64


def test_a_failing_task_stops_the_others_and_its_error_is_raised():
    affine = Affine()
    fn = RowwiseFunction(affine)
    started = []

    def failing():
        fn(torch.ones(1, 3, dtype=torch.float64), torch.ones(1, dtype=torch.float64), scale=torch.zeros(1, 1))
        raise KeyError("broken reward")

    def long_running():
        started.append(threading.current_thread().name)
        return task(fn, 2, 100, 0)()

    with pytest.raises(KeyError, match="broken reward"):
        run_lockstep([long_running, failing])
    assert len(affine.batches) < 100  # the other task was stopped, not run to the end
    assert started


def test_a_failing_merged_call_raises_in_every_caller():
    def broken(x):
        raise FloatingPointError("overflow")

    fn = RowwiseFunction(broken)
    errors = []

    def call():
        try:
            fn(torch.ones(2, 1))
        except FloatingPointError as error:
            errors.append(error)
        return "done"

    assert run_lockstep([call, call, call]) == ["done"] * 3
    assert len(errors) == 3


def test_graph_building_calls_are_not_merged_and_backpropagate():
    affine = Affine()
    fn = RowwiseFunction(affine)

    def gradient(seed):
        def run():
            x = torch.randn(2, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            x.requires_grad_(True)
            fn(
                x, torch.ones(2, dtype=torch.float64), scale=torch.zeros(2, 1, dtype=torch.float64)
            ).sum().backward()
            return x.grad

        return run

    grads = run_lockstep([gradient(0), gradient(1)])
    expected = affine.weight.sum(1).expand(2, 3)
    for grad in grads:
        torch.testing.assert_close(grad, expected)
    assert affine.batches == [2, 2]


def test_outside_lockstep_the_function_is_called_directly():
    affine = Affine()
    fn = RowwiseFunction(affine, max_rows=1)
    out = fn(
        torch.ones(3, 3, dtype=torch.float64), torch.ones(3, dtype=torch.float64), scale=torch.zeros(3, 1)
    )
    assert out.shape == (3, 3) and affine.batches == [3]  # max_rows bounds merged calls only
    assert run_lockstep([lambda: 7]) == [7]
    with pytest.raises(ValueError, match="max_rows"):
        RowwiseFunction(affine, max_rows=0)


def test_an_aborted_task_reports_the_original_failure_not_the_abort():
    fn = RowwiseFunction(lambda x: x)

    def fail_later():
        fn(torch.ones(1, 1))
        raise RuntimeError("the real problem")

    def keep_calling():
        for _ in range(50):
            fn(torch.ones(1, 1))

    with pytest.raises(RuntimeError, match="the real problem"):
        run_lockstep([keep_calling, fail_later])
    assert issubclass(LockstepAborted, RuntimeError)
