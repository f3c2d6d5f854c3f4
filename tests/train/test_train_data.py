"""Camera-motion clips, a tiny packed build from generated images, and ClipDataset read-back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from vsrq.train.data import (
    EVAL_PHOTOS,
    TRAIN_PHOTOS,
    CameraMotion,
    ClipDataset,
    Sources,
    build_dataset,
    build_eval_set,
    camera_path,
    load_eval_set,
    load_image,
    place_camera,
    render_camera_clip,
    sample_camera_motion,
)
from vsrq.train.degrade import encode_clip


def texture(h: int, w: int, seed: int, cell: int = 6) -> np.ndarray:
    """Random colour image with octaves of detail from 8x`cell` down to `cell` pixels (falling
    amplitude, roughly like a natural image's spectrum)."""
    rng = np.random.default_rng(seed)
    img = torch.zeros(1, 3, h, w)
    for octave in range(4):
        c = cell * 2 ** (3 - octave)
        base = torch.from_numpy(rng.random((1, 3, h // c + 2, w // c + 2))).float() - 0.5
        img += F.interpolate(base, size=(h, w), mode="bicubic", align_corners=False) * 0.6**octave
    img = (img / 1.6 + 0.5).clamp(0, 1)
    return (img[0] * 255).round().byte().permute(1, 2, 0).contiguous().numpy()


def save_png(path: Path, img: np.ndarray) -> Path:
    path.write_bytes(encode_clip(img[None], "rgb-lossless", container="matroska"))  # any FFmpeg-readable still
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Sources:
    d = tmp_path_factory.mktemp("src")
    photos = {f"p{i}": save_png(d / f"p{i}.mkv", texture(240, 320, i)) for i in range(3)}
    art = {"a0": save_png(d / "a0.mkv", (texture(200, 200, 9, cell=40) // 64 * 64).astype(np.uint8))}
    vid = texture(96, 96 + 40, 7)
    frames = np.stack([vid[:, 2 * t : 2 * t + 96] for t in range(20)])
    (d / "movie.mp4").write_bytes(encode_clip(frames, "h264", 16, container="mp4"))
    return Sources(train_photos=photos, art=art, train_videos={"movie.mp4": d / "movie.mp4"}, eval_photos={"e0": save_png(d / "e0.mkv", texture(240, 320, 99))}, eval_videos={"bigbuckbunny.mp4": d / "movie.mp4"})


def test_held_out_lists_are_disjoint() -> None:
    assert not set(TRAIN_PHOTOS) & set(EVAL_PHOTOS)
    assert not set(TRAIN_PHOTOS.values()) & set(EVAL_PHOTOS.values())


def test_static_camera_at_unit_scale_is_an_exact_crop() -> None:
    img = texture(120, 160, 1)
    clip = render_camera_clip(img, CameraMotion(base_scale=1.0), (80.5, 60.5), 3, (32, 48))
    assert np.array_equal(clip[0], img[45:77, 57:105]) and np.array_equal(clip[2], clip[0])


def test_camera_clips_move_smoothly() -> None:
    img = texture(400, 600, 2)
    rng = np.random.default_rng(0)
    m = CameraMotion(base_scale=0.6, velocity=(2.5, -1.0), shake_amp=0.5, zoom_rate=0.01, rot0=0.02, rot_rate=0.004)
    centre = place_camera(rng, img.shape[:2], m, 8, (64, 64))
    assert centre is not None
    clip = render_camera_clip(img, m, centre, 8, (64, 64)).astype(np.float64)
    steps = np.abs(np.diff(clip, axis=0)).mean(axis=(1, 2, 3))
    unrelated = np.abs(clip[0] - render_camera_clip(img, CameraMotion(0.6), (100.0, 100.0), 1, (64, 64))[0]).mean()
    assert (steps > 0.5).all(), "consecutive frames should differ"
    assert steps.max() < 0.6 * unrelated, "but stay much closer than unrelated views"
    path = camera_path(m, 8)
    assert np.allclose(path[0], [0, 0, 0.6, 0.02]) and path[-1, 2] > path[0, 2]


def test_sampled_moves_fit_inside_the_image() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        m = sample_camera_motion(rng)
        c = place_camera(rng, (1600, 2560), m, 12, (256, 256))
        if c is not None:
            assert 0 <= c[0] < 2560 and 0 <= c[1] < 1600


def test_tiny_build_respects_cap_and_reads_back(tmp_path: Path, sources: Sources) -> None:
    out = tmp_path / "ds"
    cap = 0.25
    kw = dict(seed=0, max_mib=cap, clip_len=6, photo_size=64, video_size=32, lr_variants=2, sources=sources, log=lambda *_: None)
    man = build_dataset(out, **kw)
    total = sum(p.stat().st_size for p in out.iterdir())
    assert total <= cap * 2**20 and man["total_bytes"] == total
    assert man["clips"] >= 5 and json.loads((out / "manifest.json").read_text())["clips"] == man["clips"]
    assert {s.split(":")[0] for s in man["by_source"]} <= {"photo", "art", "video"}

    ds = ClipDataset(out, crop=32, frames=4)
    assert len(ds) == man["clips"] and ds.skipped == 0
    torch.manual_seed(0)
    item = ds[0]
    assert item["lr"].shape == (3, 4, 8, 8) and item["hr"].shape == (3, 4, 32, 32)
    assert item["lr"].dtype == torch.float32 and 0 <= item["lr"].min() and item["hr"].max() <= 1
    batch = torch.utils.data.default_collate([ds[i] for i in range(3)])
    assert batch["hr"].shape == (3, 3, 4, 32, 32)

    lr, hr = ds.load_clip(0, 1)
    assert lr.shape == (6, hr.shape[1] // 4, hr.shape[2] // 4, 3)
    # No augmentation: the centre crop of the stored clip, LR and HR aligned.
    plain = ClipDataset(out, crop=32, augment=False, variant=1)
    it = plain[0]
    c = (lr.shape[1] - 8) // 2
    assert torch.equal(it["lr"], torch.from_numpy(lr[:, c : c + 8, c : c + 8]).permute(3, 0, 1, 2).float() / 255)
    assert torch.equal(it["hr"], torch.from_numpy(hr[:, 4 * c : 4 * c + 32, 4 * c : 4 * c + 32]).permute(3, 0, 1, 2).float() / 255)

    # Same seed, same content (safetensors may order its header keys differently, so compare parsed).
    man2 = build_dataset(tmp_path / "ds2", **kw)
    assert man2["clips"] == man["clips"]
    a, b = (safe_open(str(d / "shard-000.safetensors"), "numpy") for d in (out, tmp_path / "ds2"))
    assert a.metadata() == b.metadata()
    for k in ("hr", "hr_offsets", "lr", "lr_offsets"):
        assert np.array_equal(a.get_tensor(k), b.get_tensor(k))

    big = ClipDataset(out, crop=64)
    assert big.skipped == man["by_source"].get("video:movie.mp4", 0)


def test_build_refuses_held_out_sources(tmp_path: Path, sources: Sources) -> None:
    bad = Sources(train_photos=sources.train_photos, train_videos={"bigbuckbunny.mp4": sources.train_videos["movie.mp4"]})
    with pytest.raises(ValueError, match="held-out"):
        build_dataset(tmp_path / "x", sources=bad, max_mib=0.1, log=lambda *_: None)


def test_eval_set_round_trip(tmp_path: Path, sources: Sources) -> None:
    man = build_eval_set(tmp_path / "ev", frames=4, size=(64, 96), video_clips=2, photo_clips=1, sources=sources, log=lambda *_: None)
    clips = load_eval_set(tmp_path / "ev")
    assert [c.name for c in clips] == [i["name"] for i in man["clips"]] and len(clips) == 3
    for c in clips:
        assert c.hr.shape == (4, 64, 96, 3) and c.lr.shape == (4, 16, 24, 3)
        assert c.lr_path.suffix == ".mp4"


def test_load_image_drops_alpha(tmp_path: Path) -> None:
    img = texture(20, 30, 4)
    assert np.array_equal(load_image(save_png(tmp_path / "x.mkv", img)), img)


def test_light_share_builds_a_light_only_set(tmp_path: Path, sources: Sources) -> None:
    """--light-share 1.0: every LR version comes from the light family, and the manifest says so."""
    from vsrq.train.degrade import is_light

    man = build_dataset(tmp_path / "light", seed=1, max_mib=0.12, clip_len=4, photo_size=64, video_size=32,
                        lr_variants=2, light_share=1.0, sources=sources, log=lambda *_: None)
    assert man["light_share"] == 1.0 and man["clips"] >= 2
    ds = ClipDataset(tmp_path / "light", crop=None, augment=False)
    params = [p for i in range(len(ds)) for p in ds.meta[i]["lr"]]
    assert len(params) == 2 * man["clips"] and all(is_light(p) for p in params)


def test_data_cli_rejects_bad_shares_in_one_line(tmp_path: Path, capsys) -> None:
    from vsrq.train.data import main

    for args in (["--light-share", "1.5"], ["--art-fraction", "0.95"]):
        assert main(["build", "--out", str(tmp_path / "x"), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("python -m vsrq.train.data: error:") and "\n" not in err
        assert not (tmp_path / "x").exists()
