"""Result files are written whole or not at all, with the usual permissions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lightning_ttt.io import atomic_write, atomic_write_json, default_dir_mode, default_file_mode, replacing_dir, save_figure


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    atomic_write_json(path, {"loss": 1.0})

    def broken(f):
        f.write(b'{"loss": ')
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        atomic_write(path, broken)
    assert path.read_text() == '{\n "loss": 1.0\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    assert path.stat().st_mode & 0o777 == default_file_mode()


def test_figures_are_saved_in_the_format_of_their_suffix(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([1, 2], [3, 4])
    save_figure(fig, tmp_path / "figures" / "curve.png")
    assert (tmp_path / "figures" / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert not plt.fignum_exists(fig.number)  # closed
    assert os.listdir(tmp_path / "figures") == ["curve.png"]


def test_a_results_folder_is_refused_when_used_and_replaced_whole_with_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(FileExistsError, match=f"--out {out} is not empty; pass --overwrite"):
        with replacing_dir(out):
            pass
    with pytest.raises(RuntimeError, match="boom"), replacing_dir(out, overwrite=True) as new:
        (new / "half.txt").write_text("half")
        raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "old.txt").read_text() == "old"
    with replacing_dir(out, overwrite=True) as new:
        assert new != out and new.parent == tmp_path
        (new / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"] and [p.name for p in tmp_path.iterdir()] == ["out"]
    assert out.stat().st_mode & 0o777 == default_dir_mode()
    with replacing_dir(tmp_path / "fresh" / "deep") as new:
        (new / "a.txt").write_text("a")
    assert (tmp_path / "fresh" / "deep" / "a.txt").read_text() == "a"
