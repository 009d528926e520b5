"""py.ops.observe: every public op reports its calls (name, bound arguments, output) to observers."""
import torch

import py.ops as ops


def test_every_public_op_reports_name_arguments_and_output():
    torch.manual_seed(0)
    u, delta = torch.randn(1, 4, 6), torch.rand(1, 4, 6)
    A, B, C = -torch.rand(4, 2), torch.randn(1, 2, 6), torch.randn(1, 2, 6)
    x = torch.randn(1, 3, 4, 5)
    calls = []
    with ops.observe(calls.append):
        y = ops.selective_scan(u, delta, A, B, C, delta_softplus=True)
        xs = ops.cross_scan(x)
        merged = ops.cross_merge(xs.view(1, 4, 3, 4, 5))
        s = ops.ssd(torch.randn(1, 6, 2, 3), torch.rand(1, 6, 2), -torch.rand(2), torch.randn(1, 6, 1, 4),
                    torch.randn(1, 6, 1, 4), chunk_size=4)
    assert [c.op for c in calls] == ["selective_scan", "cross_scan", "cross_merge", "ssd"]
    first = calls[0]
    assert first.args["u"] is u and first.args["delta_softplus"] is True and first.args["D"] is None
    assert first.args["backend"] == "auto" and first.output is y
    assert calls[1].output is xs and calls[2].output is merged and calls[3].output is s
    assert calls[3].args["chunk_size"] == 4 and calls[3].args["causal"] is True


def test_observers_nest_and_nothing_is_reported_outside():
    outer, inner = [], []
    x = torch.randn(1, 2, 3, 3)
    with ops.observe(outer.append):
        ops.cross_scan(x)
        with ops.observe(inner.append):
            ops.cross_scan(x)
    ops.cross_scan(x)
    assert len(outer) == 2 and len(inner) == 1
