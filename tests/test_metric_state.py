"""MetricState: torchmetrics' add_state interface without torchmetrics. States declared, reset and moved; update
without gradients; and a sharded evaluation on two real gloo processes computes what one process computes on all
the data (sums, maxima, and lists concatenated in rank order), each process keeping its own states afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from advbayes.metric_state import MetricState


class Recording(MetricState):
    """Sums, a maximum and the values themselves of every batch."""

    total: torch.Tensor
    largest: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("largest", default=torch.tensor(-1.0), dist_reduce_fx="max")
        self.add_state("values", default=[], dist_reduce_fx="cat")

    def update(self, batch: torch.Tensor) -> None:  # type: ignore[override]
        self.total += batch.double().sum()
        self.largest = torch.maximum(self.largest, batch.max())
        self.values.append(batch * 1.0)

    def compute(self) -> dict[str, torch.Tensor]:  # type: ignore[override]
        values = self.values if isinstance(self.values, torch.Tensor) else torch.cat(self.values)
        return {"total": self.total, "largest": self.largest, "count": torch.tensor(len(values)), "values": values}


def test_states_update_without_gradients_reset_and_refuse_bad_declarations() -> None:
    state = Recording()
    x = torch.tensor([1.0, 5.0, 2.0], requires_grad=True)
    state.update(x)
    state.update(torch.tensor([7.0]))
    assert not state.values[0].requires_grad  # update ran under no_grad, as torchmetrics runs it
    result = state.compute()
    assert float(result["total"]) == 15.0 and float(result["largest"]) == 7.0 and int(result["count"]) == 4
    assert state.to(torch.float64).total.dtype == torch.float64 and "total" in dict(state.named_buffers())
    state.reset()
    assert float(state.total) == 0.0 and float(state.largest) == -1.0 and state.values == []
    with pytest.raises(ValueError, match="dist_reduce_fx must be one of"):
        state.add_state("bad", default=torch.tensor(0), dist_reduce_fx="median")
    with pytest.raises(ValueError, match="a list state starts empty and is reduced by 'cat'"):
        state.add_state("bad", default=[], dist_reduce_fx="sum")


WORKER = """
import json, sys, torch, torch.distributed as dist
sys.path.insert(0, {tests!r})
from test_metric_state import Recording
rank, port = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{{port}}", rank=rank, world_size=2)
data = torch.arange(1.0, 9.0)
shard = data[:5] if rank == 0 else data[5:]  # uneven: 5 and 3 values
state = Recording()
for part in shard.split(2):
    state.update(part)
result = state.compute()
own = torch.cat(state.values)  # the process's own list again after the sync
print(json.dumps([rank, float(result["total"]), float(result["largest"]), int(result["count"]),
                  result["values"].tolist(), own.tolist()]), flush=True)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_gloo_processes_reduce_to_what_one_process_computes(tmp_path: Path) -> None:
    from servers import free_port

    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).resolve().parent)))
    port = str(free_port())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen([sys.executable, str(script), str(rank), port], stdout=subprocess.PIPE, text=True, env=env)
        for rank in (0, 1)
    ]
    outputs = [json.loads(worker.communicate(timeout=120)[0]) for worker in workers]
    assert all(worker.returncode == 0 for worker in workers)
    single = Recording()
    single.update(torch.arange(1.0, 9.0))
    expected = single.compute()
    for rank, (printed_rank, total, largest, count, values, own) in enumerate(outputs):
        assert int(printed_rank) == rank
        assert float(total) == float(expected["total"]) and float(largest) == float(expected["largest"])
        assert count == 8 and values == expected["values"].tolist()  # in rank order: shard 0, then shard 1
        assert own == ([1.0, 2.0, 3.0, 4.0, 5.0] if rank == 0 else [6.0, 7.0, 8.0])
