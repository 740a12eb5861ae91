"""Per-position NLL: buckets partition the positions, means are token-weighted, ranks are summed."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from ranks import run_ranks  # tests/ranks.py
from torchmetrics import MeanMetric

from lightning_ttt.metrics import (PositionCurve, PositionNLL, bucket_means, fixed_buckets, log2_buckets, log_binned,
                                   position_report, tail_mean, write_position_report)


@pytest.mark.parametrize("seq_len", [1, 7, 128, 1000, 16384])
def test_both_bucketings_partition_every_position(seq_len: int) -> None:
    for buckets in (log2_buckets(seq_len, 128), fixed_buckets(seq_len, 16)):
        assert buckets[0][0] == 0 and buckets[-1][1] == seq_len
        assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(buckets, buckets[1:]))
    assert len(fixed_buckets(seq_len, 16)) == min(16, seq_len)
    if seq_len == 16384:
        assert log2_buckets(seq_len, 128)[:3] == [(0, 128), (128, 256), (256, 512)]


def _random_batches(seed: int, n: int = 3, seq_len: int = 40):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        nll = torch.rand(4, seq_len, generator=g) * 5
        mask = torch.rand(4, seq_len, generator=g) > 0.3  # uneven token counts per position
        yield nll, mask


def test_metric_and_bucket_means_are_token_weighted() -> None:
    metric = PositionNLL(40)
    batches = list(_random_batches(0))
    for nll, mask in batches:
        metric.update(nll, mask)
    curve = metric.compute()
    nll = torch.cat([b[0] for b in batches]).double()
    mask = torch.cat([b[1] for b in batches]).double()
    torch.testing.assert_close(curve.nll, (nll * mask).sum(0) / mask.sum(0))
    torch.testing.assert_close(curve.tokens, mask.sum(0))
    (row,) = bucket_means(curve, [(5, 17)])
    assert row["tokens"] == int(mask[:, 5:17].sum())
    assert row["nll"] == pytest.approx(float((nll * mask)[:, 5:17].sum() / mask[:, 5:17].sum()))
    assert tail_mean(curve, 9) == pytest.approx(float((nll * mask)[:, -9:].sum() / mask[:, -9:].sum()))
    with pytest.raises(ValueError, match="built for 40 positions, got sequences of 41"):
        metric.update(torch.zeros(1, 41), torch.ones(1, 41, dtype=torch.bool))


def test_log_binned_curve_keeps_early_positions_and_averages_the_tail() -> None:
    curve = PositionCurve(torch.arange(4096.0), torch.ones(4096))
    positions, nll = log_binned(curve, bins=32)
    assert positions[:3].tolist() == [1, 2, 3]  # single positions at the start
    widths = positions[1:] - positions[:-1]
    assert len(positions) <= 33 and positions[-1] <= 4096 and widths[-1] > 100  # wide bins far out
    torch.testing.assert_close(nll, positions - 1)  # mean of a linear curve = its value at the bin centre
    masked = PositionCurve(torch.tensor([1.0, 5.0, 9.0]), torch.tensor([1.0, 0.0, 3.0]))
    assert log_binned(masked, bins=2)[1].tolist() == [1.0, 9.0]  # token-weighted; empty bins dropped


def test_report_files_hold_both_bucketings_and_the_whole_curve(tmp_path: Path) -> None:
    curve = PositionCurve(torch.linspace(3, 1, 300).double(), torch.full((300,), 2.0).double())
    report = position_report(curve, first_log_bucket=32, fixed_count=4)
    json_path, csv_path = write_position_report(report, tmp_path / "val-step000010")
    saved = json.loads(json_path.read_text())
    assert saved["seq_len"] == 300 and len(saved["nll"]) == 300 and saved["tokens"][0] == 2
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["buckets"] for r in rows].count("fixed") == 4
    assert [(int(r["lo"]), int(r["hi"])) for r in rows if r["buckets"] == "log"] == log2_buckets(300, 32)
    assert float(rows[0]["nll"]) == pytest.approx(float(curve.nll[:32].mean()), abs=1e-6)


def _rank(rank: int, world: int) -> dict:
    position, mean = PositionNLL(40), MeanMetric()
    for nll, mask in _random_batches(seed=rank):
        position.update(nll, mask)
        mean.update(nll[mask])
    curve = position.compute()
    return {"nll": curve.nll, "tokens": curve.tokens, "mean": mean.compute()}


@pytest.mark.slow  # spawns two processes
def test_metrics_are_summed_across_ranks(tmp_path: Path) -> None:
    results = run_ranks(_rank, tmp_path, world=2)
    single, mean = PositionNLL(40), MeanMetric()
    for seed in (0, 1):
        for nll, mask in _random_batches(seed):
            single.update(nll, mask)
            mean.update(nll[mask])
    expected = single.compute()
    for rank in range(2):
        synced = results[rank]
        torch.testing.assert_close(synced["nll"], expected.nll)
        torch.testing.assert_close(synced["tokens"], expected.tokens)
        torch.testing.assert_close(synced["mean"], mean.compute())
