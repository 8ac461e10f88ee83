"""Sharding over torchrun processes (gloo on CPU, 2 processes, demo models) and the 2-GPU placement."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from splatvlm.cli import main
from splatvlm.commands.generate import Guidance
from splatvlm.config import Weight, load_run_config
from splatvlm.errors import SplatVLMError
from splatvlm.run import distributed
from splatvlm.run.distributed import DistInfo, dist_info, placement_devices, shard

PROMPTS = ["a red apple", "a blue chair", "a green cat", "a wooden dog", "a tiny hat"]
# Two ranks need two GPUs (cuda:LOCAL_RANK, NCCL); with fewer they run on the CPU (gloo).
ON_GPUS = torch.cuda.device_count() >= 2
DEVICE = [] if ON_GPUS else ["--device", "cpu"]
# A re-run's world size: another than the first run's 2, and more than one process (one GPU each on a GPU machine).
RERUN_WORLD = 1 if torch.cuda.device_count() == 2 else 3
# A small scene: what is checked is who runs what, not the scene (300 points at 32 px: a step in a quarter of the time).
SMALL = ["--scene.num-points", "300", "--camera.resolution", "32"]
FAST = ["--preset", "demo", "--steps", "2", "--turntable-frames", "0", "--log-every", "1", *SMALL, *DEVICE]


def torchrun(nproc, *args, timeout=300, **popen):
    """`torchrun --standalone` (a free port of its own) running the splatvlm CLI."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "splatvlm.cli",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if popen:
        return subprocess.Popen([*cmd, *map(str, args)], env=env, text=True, **popen)
    return subprocess.run([*cmd, *map(str, args)], env=env, text=True, capture_output=True, timeout=timeout)


def rank_devices(world=2):
    """What each rank reports running on: cuda:LOCAL_RANK on a GPU machine (NCCL), else the CPU (gloo)."""
    if ON_GPUS:
        return [f"cuda:{r} {torch.cuda.get_device_name(r)}" for r in range(world)]
    return ["cpu"] * world


def write_prompts(path, prompts=PROMPTS):
    path.write_text(json.dumps(prompts))
    return path


def stamps(out):
    """mtime of every finished prompt's summary.json and scene.ply: unchanged means not run again."""
    return {
        p.name: ((p / "summary.json").stat().st_mtime_ns, (p / "scene.ply").stat().st_mtime_ns)
        for p in sorted(out.iterdir())
        if (p / "summary.json").is_file()
    }


# ---------------------------------------------------------------------------------------------
# Sharding and the torchrun environment


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
@pytest.mark.parametrize(
    "indices", [list(range(0)), list(range(1)), list(range(5)), list(range(23)), [1, 4, 5, 9, 10, 17]]
)
def test_shards_are_disjoint_complete_and_balanced(world, indices):
    shares = [shard(indices, r, world) for r in range(world)]
    flat = [i for s in shares for i in s]
    assert sorted(flat) == sorted(indices) and len(flat) == len(set(flat))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert shard(indices, 0, world) == shard(indices, 0, world)  # deterministic
    if indices == list(range(len(indices))):
        for r, s in enumerate(shares):
            assert all(i % world == r for i in s)


def test_shard_rejects_a_rank_outside_the_world():
    with pytest.raises(ValueError):
        shard([0, 1], 2, 2)
    with pytest.raises(ValueError):
        shard([0, 1], 0, 0)


def test_dist_info_reads_the_torchrun_environment():
    assert dist_info({}) == DistInfo() and not DistInfo().launched
    info = dist_info({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert info == DistInfo(3, 4, 1, 2, launched=True) and not info.is_main
    with pytest.raises(SplatVLMError, match="inconsistent"):
        dist_info({"RANK": "4", "WORLD_SIZE": "4", "LOCAL_RANK": "0"})


# ---------------------------------------------------------------------------------------------
# Placement


@pytest.fixture
def gpus(monkeypatch):
    """Pretend this machine has `n` CUDA GPUs (only device bookkeeping runs; nothing touches CUDA)."""

    def set_count(n):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return set_count


def test_placement_devices(gpus):
    cuda = lambda i: torch.device("cuda", i)
    one, rank1 = DistInfo(), DistInfo(1, 2, 1, 2, launched=True)
    gpus(0)
    assert placement_devices("auto", "single", one) == (torch.device("cpu"),) * 2
    assert placement_devices("cpu", "single", rank1) == (torch.device("cpu"),) * 2
    gpus(4)
    assert (
        placement_devices("auto", "single", one) == (torch.device("cuda"),) * 2
    )  # unchanged without torchrun
    assert placement_devices("auto", "single", rank1) == (cuda(1), cuda(1))
    assert placement_devices("auto", "split", one) == (cuda(0), cuda(1))
    assert placement_devices("cuda:2", "split", one) == (cuda(2), cuda(3))
    assert placement_devices("cuda", "split", rank1) == (cuda(2), cuda(3))
    with pytest.raises(SplatVLMError, match="LOCAL_RANK"):
        placement_devices("cuda:3", "single", rank1)
    gpus(3)
    with pytest.raises(SplatVLMError, match="needs 4 GPUs on this node for 2 processes"):
        placement_devices("auto", "split", DistInfo(0, 2, 0, 2, launched=True))
    with pytest.raises(SplatVLMError, match=r"cuda:2 and cuda:3\); found 3"):
        placement_devices("cuda:2", "split", one)
    gpus(1)
    with pytest.raises(SplatVLMError, match=r"needs 2 CUDA GPUs \(cuda:0 and cuda:1\); found 1"):
        placement_devices("auto", "split", one)
    with pytest.raises(SplatVLMError, match="not with --device cpu"):
        placement_devices("cpu", "split", one)


class FakeReward:
    """Stands in for VLMReward: records where it was built and where its renders arrive."""

    seen: list = []

    def __init__(self, cfg, src, device):
        self.device = device
        FakeReward.seen.append(("init", device))

    def set_prompt(self, prompt):
        self.prompt = prompt

    def __call__(self, rgb, cams, step):
        FakeReward.seen.append(("call", rgb.device))
        weights = torch.arange(rgb.numel(), dtype=rgb.dtype, device=rgb.device).reshape(rgb.shape)
        loss = (rgb * weights).sum() if rgb.device.type != "meta" else torch.zeros(())
        return {"loss_vlm": loss, "reward": 0.0, "p_yes": 0.5}


@pytest.fixture
def reward_only(monkeypatch):
    import splatvlm.models

    FakeReward.seen = []
    monkeypatch.setattr(splatvlm.models, "build_reward", FakeReward)  # models.py builds what a term needs
    cfg = load_run_config("demo")
    return replace(cfg, weights=replace(cfg.weights, sds=Weight(0.0)))  # only the reward term loads


def test_guidance_routes_the_reward_to_its_device(reward_only):
    rgb = torch.rand(4, 8, 8, 3)
    # Single placement: the renders reach the reward untouched.
    Guidance(reward_only, torch.device("cpu")).terms("a cat")["vlm"].fn(rgb, None, 0)
    assert FakeReward.seen == [("init", torch.device("cpu")), ("call", torch.device("cpu"))]
    # Split: the reward is built on, and receives renders on, its own device.
    FakeReward.seen = []
    out = (
        Guidance(reward_only, torch.device("cpu"), vlm_device=torch.device("meta"))
        .terms("a cat")["vlm"]
        .fn(rgb, None, 0)
    )
    assert FakeReward.seen == [("init", torch.device("meta")), ("call", torch.device("meta"))]
    assert out["loss_vlm"].device == torch.device("cpu")


def test_split_routing_keeps_the_gradient(reward_only):
    # cpu and cpu:0 are distinct devices to the routing code, so the split branch runs with real autograd.
    rgb = torch.rand(4, 8, 8, 3, requires_grad=True)
    term = Guidance(reward_only, torch.device("cpu"), vlm_device=torch.device("cpu", 0)).terms("a cat")["vlm"]
    out = term.fn(rgb, None, 0)
    out["loss_vlm"].backward()
    expected = torch.arange(rgb.numel(), dtype=rgb.dtype).reshape(rgb.shape)
    assert torch.equal(rgb.grad, expected)
    assert torch.allclose(out["loss_vlm"], (rgb.detach() * expected).sum())


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="checks the error of a machine without 2 GPUs")
def test_split_without_two_gpus_is_a_one_line_error(tmp_path, capsys):
    code = main(
        ["generate", "a cat", "-o", str(tmp_path / "x.ply"), "--preset", "demo", "--placement", "split"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: --placement split needs 2 CUDA GPUs")
    assert list(tmp_path.iterdir()) == []  # failed before any file or folder
    code = main(["bench", "--preset", "demo", "-o", str(tmp_path / "b"), "--placement", "split"])
    assert code == 2 and "--placement split needs" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_one_prompt_refuses_several_processes(tmp_path, capsys, monkeypatch):
    for k, v in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(k, v)
    code = main(["generate", "a cat", "-o", str(tmp_path / "x.ply"), "--preset", "demo"])
    assert code == 2 and "runs in one process" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# torchrun with 2 gloo processes


def test_two_processes_run_every_prompt_once(tmp_path):
    prompts, out = write_prompts(tmp_path / "prompts.json"), tmp_path / "batch"
    proc = torchrun(2, "generate", "--prompts", prompts, "--out-dir", out, *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == [
        "000-a-red-apple",
        "001-a-blue-chair",
        "002-a-green-cat",
        "003-a-wooden-dog",
        "004-a-tiny-hat",
    ]
    for f in folders:
        assert json.loads((out / f / "summary.json").read_text())["finished"] is True
        assert len((out / f / "metrics.jsonl").read_text().splitlines()) == 2  # 2 steps, run once
    report = json.loads((out / "batch_report.json").read_text())
    assert report["world_size"] == 2 and report["num_prompts"] == 5 and report["devices"] == rank_devices(2)
    assert report["shards"] == {"0": [0, 2, 4], "1": [1, 3]}
    assert [e["index"] for e in report["prompts"]] == list(range(5))
    assert [e["prompt"] for e in report["prompts"]] == PROMPTS
    assert [e["rank"] for e in report["prompts"]] == [0, 1, 0, 1, 0]
    for e, f in zip(report["prompts"], folders, strict=True):
        assert e["status"] == "done" and e["steps"] == 2 and e["seconds"] > 0
        assert e["output"] == str(out / f / "scene.ply") and Path(e["output"]).is_file()
    assert report["prompts_per_hour"] == pytest.approx(5 * 3600 / report["wall_s"], rel=1e-3)
    assert proc.stdout.count("done: ") == 5  # rank 0 prints every prompt's summary, the others nothing


@pytest.mark.slow
def test_a_killed_rank_and_a_lost_result_are_picked_up_by_a_rerun_with_another_world_size(tmp_path):
    """Two processes; rank 1 is killed in its second prompt (index 3), after its first (index 1) finished, whose
    summary is then lost. A re-run with another world size runs what is missing, each from its checkpoint: the
    lost result at its last step, the killed prompt where it stopped; what finished is not run again."""
    prompts, out = write_prompts(tmp_path / "prompts.json", PROMPTS[:4]), tmp_path / "batch"
    args = [*FAST[:2], "--steps", "8", "--checkpoint-every", "2", *FAST[4:]]
    log = open(tmp_path / "killed.log", "w")  # a file, not a pipe: nothing blocks while we poll
    agent = torchrun(
        2, "generate", "--prompts", prompts, "--out-dir", out, *args, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        # Kill rank 1 as soon as its second prompt (index 3) has a checkpoint.
        deadline = time.time() + 180
        while not list(out.glob("003-*/checkpoint.pt")):
            assert time.time() < deadline and agent.poll() is None, "rank 1 never wrote a checkpoint"
            time.sleep(0.05)
        os.kill(_worker_pid(agent.pid, rank=1), signal.SIGKILL)
        agent.wait(timeout=120)
    finally:
        if agent.poll() is None:
            agent.kill()
        log.close()
    assert agent.returncode != 0, (tmp_path / "killed.log").read_text()[-3000:]
    killed, lost = next(out.glob("003-*")), next(out.glob("001-*"))
    assert not (killed / "summary.json").exists()
    assert json.loads((lost / "summary.json").read_text())["finished"] is True
    (lost / "summary.json").unlink()  # a lost result: its checkpoint is at the last step
    before = stamps(out)  # whatever finished before the kill must not run again
    assert lost.name not in before and killed.name not in before
    done_before = {int(name.split("-", 1)[0]) for name in before}  # folders are <index>-<slug>
    missing = [i for i in range(4) if i not in done_before]
    time.sleep(0.05)
    proc = torchrun(RERUN_WORLD, "generate", "--prompts", prompts, "--out-dir", out, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stderr = proc.stderr.replace("\n", "")  # rich wraps lines
    assert f"resuming {lost} at step 8/8" in stderr and f"resuming {killed} at step " in stderr
    after = stamps(out)
    assert len(after) == 4 and {k: after[k] for k in before} == before
    report = json.loads((out / "batch_report.json").read_text())
    assert report["world_size"] == RERUN_WORLD and report["devices"] == rank_devices(RERUN_WORLD)
    assert report["shards"] == {str(r): shard(missing, r, RERUN_WORLD) for r in range(RERUN_WORLD)}
    assert [e["status"] for e in report["prompts"]] == [
        "already_done" if i in done_before else "done" for i in range(4)
    ]
    assert all(e["steps"] == 8 for e in report["prompts"])
    for f in after:
        assert torch.load(out / f / "checkpoint.pt", weights_only=True)["step"] == 8


def _worker_pid(agent_pid, rank):
    """The pid of torchrun's worker process with RANK=rank (a child of the agent, from any of its threads)."""
    children = [
        c for t in Path(f"/proc/{agent_pid}/task").iterdir() for c in (t / "children").read_text().split()
    ]
    for child in children:
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(child)
    raise AssertionError(f"no worker with RANK={rank} under {agent_pid}")


def test_two_process_bench_writes_one_report_with_every_prompt(tmp_path):
    prompts, out = write_prompts(tmp_path / "prompts.json", PROMPTS[:3]), tmp_path / "bench"
    device = [] if ON_GPUS else ["--recipe.device", "cpu"]
    proc = torchrun(
        2,
        "bench",
        "--preset",
        "demo",
        "--prompts",
        prompts,
        "-o",
        out,
        "--steps",
        "1",
        "--warmup",
        "0",
        *[f"--recipe.{flag[2:]}" if flag.startswith("--") else flag for flag in SMALL],
        "--gaussians",
        "0",  # timed on the initial scene: growing it to the cap first is not what this test is about
        *device,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("# splatvlm bench") == 1  # rank 0 alone prints the summary
    report = json.loads((out / "report.json").read_text())
    rows = report["ours"]["prompts"]
    assert [(r["index"], r["rank"], r["prompt"]) for r in rows] == [
        (0, 0, PROMPTS[0]),
        (1, 1, PROMPTS[1]),
        (2, 0, PROMPTS[2]),
    ]
    assert all(r["asset_s"] > 0 and r["phases"][0]["timed_steps"] == 1 for r in rows)
    assert (
        report["world_size"] == 2 and report["devices"] == rank_devices(2) and report["placement"] == "single"
    )
    assert report["prompts_per_hour"] == pytest.approx(3 * 3600 / report["bench_wall_s"])
    assert sorted(p.name for p in (out / "runs" / "ours").iterdir()) == ["000", "001", "002"]
    assert "2 process(es), placement single" in (out / "report.md").read_text()


# ---------------------------------------------------------------------------------------------
# Two GPUs: the split placement gives the single placement's numbers


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_split_placement_matches_single_on_two_gpus(tmp_path, cuda_graph):
    from splatvlm.gaussians.scene import init_ball
    from splatvlm.run.train_state import new_state
    from splatvlm.run.trainer import train

    cfg = load_run_config("demo")
    cfg = replace(
        cfg,
        sds=replace(cfg.sds, dtype="float32", cuda_graph=cuda_graph),
        vlm=replace(cfg.vlm, dtype="float32", cuda_graph=cuda_graph),
        checkpoint_every=0,
    )
    main_dev, vlm_dev = torch.device("cuda", 0), torch.device("cuda", 1)
    distributed.use_device(main_dev)
    results = {}
    for name, vlm_device in (("single", None), ("split", vlm_dev)):
        guidance = Guidance(cfg, main_dev, vlm_device=vlm_device)
        terms = guidance.terms("a red apple")
        # The reward term alone: loss and gradient to the renders.
        rgb = (
            torch.rand(4, 64, 64, 3, generator=torch.Generator().manual_seed(0))
            .to(main_dev)
            .requires_grad_(True)
        )
        out = terms["vlm"].fn(rgb, None, 0)
        assert out["loss_vlm"].device == main_dev
        out["loss_vlm"].backward()
        # One whole training step (prior + reward).
        torch.manual_seed(cfg.seed)
        state = new_state(init_ball(cfg.scene, torch.Generator().manual_seed(cfg.seed)), cfg, main_dev)
        logs = []
        run_dir = tmp_path / name
        run_dir.mkdir()
        train(
            cfg,
            state,
            terms,
            run_dir,
            main_dev,
            stop_after=1,
            progress=False,
            on_step=lambda s, lg, logs=logs: logs.append(lg),
        )
        results[name] = (
            out["loss_vlm"].item(),
            rgb.grad.cpu(),
            logs[0],
            state.params["means"].detach().cpu(),
        )
        if vlm_device is not None:
            assert next(guidance.vlm.model.parameters()).device == vlm_dev
    (l1, g1, logs1, m1), (l2, g2, logs2, m2) = results["single"], results["split"]
    print(
        f"split vs single: loss_vlm {l1:.6f} / {l2:.6f}, step loss {logs1['loss']:.6f} / {logs2['loss']:.6f}"
    )
    assert l2 == pytest.approx(l1, rel=1e-4, abs=1e-5)
    assert torch.allclose(g2, g1, rtol=1e-3, atol=1e-6)
    for key in ("loss", "loss_vlm", "loss_sds"):
        assert logs2[key] == pytest.approx(logs1[key], rel=1e-4, abs=1e-5), key
    assert torch.allclose(m2, m1, rtol=1e-4, atol=1e-6)
