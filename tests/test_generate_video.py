"""`dsample generate` with video pipelines: GIF + PNG frames (+ MP4), manifest, resume, search, report."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from pipelines import generate as generate_module
from pipelines.cli import main
from pipelines.generate import image_seed
from pipelines.video import gif_delay_ms

SIZE = ("--width", "32", "--height", "32")
WAN = ("--prompt", "a cat", "--prompt", "a dog", "--num-images", "2", "--steps", "2", *SIZE,
       "--num-frames", "5")  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory) -> Path:
    from tiny_pipelines import tiny_wan

    path = tmp_path_factory.mktemp("models") / "tiny-wan"
    tiny_wan().save_pretrained(path)
    return path


@pytest.fixture
def calls(monkeypatch) -> list[int]:
    """How many videos each pipeline call of plain generation made."""
    made: list[int] = []
    original = generate_module.DiffusersModel.generate

    def counting(self, jobs, scheduler, generators):
        made.append(len(jobs))
        return original(self, jobs, scheduler, generators)

    monkeypatch.setattr(generate_module.DiffusersModel, "generate", counting)
    return made


def generate(out: Path, *args: str) -> int:
    return main(["generate", "--out", str(out), "--quiet", *args])


def manifest(out: Path) -> list[dict]:
    lines = (out / "manifest.jsonl").read_text().splitlines()
    return sorted((json.loads(line) for line in lines), key=lambda r: (r["prompt_index"], r["sample_index"]))


def snapshot(out: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under the run (but the manifest) with its bytes and modification time."""
    return {
        p.relative_to(out).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "manifest.jsonl"
    }


def gif_frames(path: Path) -> tuple[int, tuple[int, int], int]:
    with Image.open(path) as gif:
        return gif.n_frames, gif.size, gif.info["duration"]


def mp4_installed() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("imageio", "imageio_ffmpeg"))


def test_wan_writes_gif_and_frames_records_them_and_resumes(tmp_path, wan_dir, calls, capsys):
    out = tmp_path / "run"
    assert generate(out, "--model", str(wan_dir), *WAN) == 0, capsys.readouterr().err
    assert "4 videos in" in capsys.readouterr().out and sum(calls) == 4
    records = manifest(out)
    assert [(r["prompt_index"], r["sample_index"]) for r in records] == [
        (p, s) for p in (0, 1) for s in (0, 1)
    ]
    for r in records:
        p, s = r["prompt_index"], r["sample_index"]
        stem = f"videos/{p}_{s}"
        assert r["image"] == f"{stem}.gif" and r["video"] == {"gif": f"{stem}.gif", "frames": stem}
        assert r["num_frames"] == 5 and r["fps"] == 16.0 and r["video_formats"] == ["gif", "frames"]
        assert (r["width"], r["height"]) == (32, 32) and r["image_seed"] == image_seed(0, p, s)
        assert r["settings"]["num_frames"] == 5 and r["settings"]["fps"] == 16.0
        assert gif_frames(out / r["image"]) == (5, (32, 32), 60)  # 1000 / 16 ms, in GIF's 10 ms unit
        frames = sorted((out / stem).iterdir())
        assert [f.name for f in frames] == [f"frame_{i:04d}.png" for i in range(5)]
        assert all(Image.open(f).size == (32, 32) and Image.open(f).mode == "RGB" for f in frames)
        assert not (out / f"{stem}.mp4").exists()
    for p in (0, 1):  # a grid of each prompt's first frames (tiles enlarged to 64 px)
        grid = Image.open(out / f"grids/{p}.png")
        assert grid.size == (128, 64)
        first = Image.open(out / f"videos/{p}_1/frame_0000.png").resize((64, 64), Image.NEAREST)
        assert grid.crop((64, 0, 128, 64)).tobytes() == first.tobytes()
    before = snapshot(out), (out / "manifest.jsonl").read_bytes()

    calls.clear()  # a rerun skips every finished video: no model call, nothing rewritten
    assert generate(out, "--model", str(wan_dir), *WAN) == 0
    assert "0 videos in" in capsys.readouterr().out and calls == []
    assert (snapshot(out), (out / "manifest.jsonl").read_bytes()) == before

    (out / "videos/1_0.gif").unlink()  # a lost GIF: exactly that video is redone, bitwise the same
    assert generate(out, "--model", str(wan_dir), *WAN) == 0
    assert "1 videos in" in capsys.readouterr().out and calls == [1]
    after = snapshot(out)
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before[0].items()}
    rewritten = sorted(k for k in after if after[k][1] != before[0][k][1])
    assert rewritten == ["grids/1.png", "videos/1_0.gif"] + [
        f"videos/1_0/frame_{i:04d}.png" for i in range(5)
    ]
    assert len(manifest(out)) == 4

    calls.clear()  # a lost frame makes its video unfinished too
    (out / "videos/0_1/frame_0003.png").unlink()
    assert generate(out, "--model", str(wan_dir), *WAN) == 0
    assert "1 videos in" in capsys.readouterr().out and calls == [1]
    assert (out / "videos/0_1/frame_0003.png").read_bytes() == before[0]["videos/0_1/frame_0003.png"][0]

    for args in ((*WAN, "--fps", "8"), (*WAN[:-1], "9"), (*WAN, "--video-format", "gif")):
        assert generate(out, "--model", str(wan_dir), *args) == 2, args  # other video settings
        assert "was made with other settings" in capsys.readouterr().err


def test_mp4_is_written_or_refused_as_installed(tmp_path, wan_dir, capsys):
    out = tmp_path / "run"
    args = ("--model", str(wan_dir), "--prompt", "a cat", "--steps", "2", *SIZE, "--num-frames", "5")
    code = generate(out, *args, "--video-format", "mp4", "--fps", "10")
    if not mp4_installed():  # the optional [video] extra is missing: a usage error before any work
        assert code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "[video] extra" in err[0] and not out.exists(), err
        return
    assert code == 0, capsys.readouterr().err
    import imageio.v2 as imageio

    (r,) = manifest(out)
    assert r["video_formats"] == ["gif", "mp4"] and r["fps"] == 10.0
    assert r["video"] == {"gif": "videos/0_0.gif", "mp4": "videos/0_0.mp4"}
    assert not (out / "videos/0_0").exists()  # no PNG frames unless asked for
    with imageio.get_reader(out / "videos/0_0.mp4", format="FFMPEG") as reader:
        frames = [frame for frame in reader]
        assert reader.get_meta_data()["fps"] == 10
    assert len(frames) == 5 and frames[0].shape == (32, 32, 3)
    assert gif_frames(out / "videos/0_0.gif") == (5, (32, 32), 100)

    (out / "videos/0_0.mp4").unlink()  # the MP4 is one of the video's files: losing it redoes the video
    assert generate(out, *args, "--video-format", "mp4", "--fps", "10") == 0
    assert "1 videos in" in capsys.readouterr().out and (out / "videos/0_0.mp4").is_file()


def test_mp4_without_the_video_extra_fails_before_the_model_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # as if not installed: importing it fails
    out = tmp_path / "run"
    assert generate(out, "--model", str(tmp_path / "no-such-model"), "--video-format", "gif,mp4") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs imageio and imageio-ffmpeg: install the [video] extra" in err[0], err
    assert not out.exists()


def test_a_video_model_searches_only_with_a_video_reward(tmp_path, wan_dir, capsys):
    out = tmp_path / "run"
    args = ("--model", str(wan_dir), "--prompt", "a cat", "--steps", "2", *SIZE, "--num-frames", "5",
            "--search", "bon", "--particles", "2", "--reward", "jpeg-compressibility")  # fmt: skip
    assert generate(out, *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("dsample: error: reward 'jpeg-compressibility' scores image, not videos"), err
    assert not (out / "manifest.jsonl").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (("--num-frames", "5"), "--num-frames: only for video models; dsample-digits makes images"),
        (("--fps", "8", "--video-format", "gif"), "--fps, --video-format: only for video models"),
        (("--video-format", "avi"), "--video-format takes gif, frames, mp4"),
        (("--num-frames", "0"), "--num-frames must be >= 1"),
        (("--fps", "0"), "--fps must be a positive number"),
    ],
)
def test_video_flags_on_the_digits_model_are_one_line_usage_errors(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert generate(out, "--prompt", "1", *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dsample: error: ") and message in err[0], err
    assert not out.exists()


def test_cogvideox_writes_videos(tmp_path, capsys):
    from tiny_pipelines import tiny_cogvideox

    model = tmp_path / "tiny-cogvideox"
    tiny_cogvideox().save_pretrained(model)
    out = tmp_path / "run"
    code = generate(
        out, "--model", str(model), "--prompt", "a cat", "--steps", "2", *SIZE, "--num-frames", "9"
    )
    assert code == 0, capsys.readouterr().err
    (r,) = manifest(out)
    assert r["model"] == "tiny-cogvideox" and r["num_frames"] == 9 and r["fps"] == 8.0
    assert gif_frames(out / "videos/0_0.gif") == (9, (32, 32), gif_delay_ms(8))  # 8 fps: CogVideoX
    assert len(list((out / "videos/0_0").glob("frame_*.png"))) == 9
    assert Image.open(out / "grids/0.png").size == (64, 64)


def test_search_on_wan_writes_videos_with_reward_and_nfe_and_the_report_animates_them(
    tmp_path, wan_dir, capsys
):
    out = tmp_path / "run"
    args = ("--model", str(wan_dir), "--prompt", "a cat", "--num-images", "2", "--steps", "2", *SIZE,
            "--num-frames", "5", "--search", "smc", "--particles", "2", "--reward", "motion")  # fmt: skip
    assert generate(out, *args) == 0, capsys.readouterr().err
    assert "mean motion reward" in capsys.readouterr().out
    records = manifest(out)
    assert len(records) == 2
    for r in records:
        assert r["search"] == "smc" and r["reward_name"] == "motion" and r["particles"] == 2
        assert isinstance(r["reward"], float) and 0 < r["reward"] <= 1
        assert r["nfe"] == 2 * 2  # 2 particles x 2 steps
        assert r["num_frames"] == 5 and gif_frames(out / r["image"])[:2] == (5, (32, 32))
        assert len(list((out / r["video"]["frames"]).glob("*.png"))) == 5
    assert generate(out, *args) == 0  # resumes as plain runs do
    assert "0 videos in" in capsys.readouterr().out

    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    uris = [part.split('"')[0] for part in page.split('src="data:image/gif;base64,')[1:]]
    assert len(uris) == 2
    assert sorted(base64.b64decode(u) for u in uris) == sorted(
        (out / r["image"]).read_bytes() for r in records
    )


def test_report_thumbnails_a_large_animated_gif_keeping_the_animation(tmp_path):
    from pipelines.report import MAX_EMBED_SIDE, _data_uri

    frames = [Image.new("RGB", (600, 300), colour) for colour in ("red", "green", "blue")]
    path = tmp_path / "big.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=120, loop=0)
    uri = _data_uri(path)
    assert uri.startswith("data:image/gif;base64,")
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as gif:
        assert gif.n_frames == 3 and gif.size == (MAX_EMBED_SIDE, MAX_EMBED_SIDE // 2)
        assert gif.info["duration"] == 120
