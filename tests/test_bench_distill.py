"""bench.distill: losses, stages (fused forms equal materialised ones), the loop and `python -m bench.run` on a
tiny teacher: each stage learns, runs resume exactly, two gloo processes equal one, bad input gets one line; sweeps."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from bench import provenance as env
from bench.data import packing as data
from bench.distill import loop as train
from bench.distill import losses, run, stages
from bench.errors import UsageError
from kernels import fused_distillation_loss, mixer_matrix_loss
from students.surgery import build_student, load_teacher
from tests.helpers import assert_close


@pytest.fixture(scope="module")
def teacher(tiny_teacher_dir):
    return load_teacher(str(tiny_teacher_dir))


@pytest.fixture(scope="module")
def batch_ids(tiny_teacher_dir, works_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    blocks = data.load_blocks(data.DataSpec(seq_len=24, works_dir=str(works_dir)), tokenizer, "train")
    return blocks[:4]


def _second_teacher(teacher, seed=1):
    other = type(teacher)(teacher.config)
    with torch.no_grad():  # a perturbed copy: same vocabulary, different predictions
        torch.manual_seed(seed)
        for p_other, p in zip(other.parameters(), teacher.parameters()):
            p_other.copy_(p + 0.05 * torch.randn_like(p))
    return other.eval()


def _train_stage(name, student, teachers, ids, steps=8, lr=1e-2, options=None):
    module = stages.StageModule(stages.STAGES[name], student, teachers, options or stages.StageOptions())
    student.requires_grad_(False)
    params = module.trainable_parameters()
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr)
    history = []
    with stages.teacher_attention(teachers, stages.STAGES[name].needs_attention_weights):
        for _ in range(steps):
            loss, _ = module(ids)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            history.append(loss.item())
    return history


# ------------------------------------------------------------------------------------------------ losses
def test_kl_is_per_token_so_sequence_length_does_not_scale_it():
    torch.manual_seed(0)
    teacher, student = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    short = losses.token_kl(teacher, student, temperature=2.0)
    long = losses.token_kl(teacher.repeat(1, 7, 1), student.repeat(1, 7, 1), temperature=2.0)
    assert torch.allclose(short, long, rtol=1e-6)
    expected = F.kl_div(F.log_softmax(student / 2, -1).flatten(0, 1), F.log_softmax(teacher / 2, -1).flatten(0, 1),
                        log_target=True, reduction="batchmean") * 4
    assert torch.allclose(short, expected, rtol=1e-5)
    # the pitfall the brief names: batchmean over (B, T, V) grows with T
    pitfall = F.kl_div(F.log_softmax(student.repeat(1, 7, 1), -1), F.softmax(teacher.repeat(1, 7, 1), -1),
                       reduction="batchmean")
    assert pitfall > 6 * losses.token_kl(teacher, student)


def test_matrix_distance_and_relative_l2_are_zero_only_at_equality():
    a = torch.rand(2, 3, 6, 6)
    assert losses.matrix_distance(a, a) == 0 and losses.matrix_distance(a, a + 0.1) > 0
    assert losses.relative_l2(a, a) == 0 and torch.isclose(losses.relative_l2(a, 2 * a), torch.tensor(1.0))
    with pytest.raises(ValueError, match="project heads"):
        losses.matrix_distance(a, a[:, :2])


def test_entropy_weights_favour_the_confident_teacher_and_fusion_is_a_distribution():
    confident = torch.tensor([[[10.0, 0.0, 0.0]]])
    unsure = torch.zeros(1, 1, 3)
    weights = losses.entropy_weights([confident, unsure], torch.tensor([0.5, 0.5]))
    assert weights[0, 0, 0] > 0.6 and torch.allclose(weights.sum(0), torch.ones(1, 1))
    fused = losses.fused_teacher_probs([confident, unsure], weights)
    assert torch.allclose(fused.sum(-1), torch.ones(1, 1))


# ------------------------------------------------------------------------------------------------ stages
def test_attention_control_with_qkv_copy_has_zero_alignment_losses(teacher, batch_ids):
    """The hooks capture the right tensors: the exact copy of the teacher scores zero in stages 1 and 2."""
    student = build_student(teacher, "attention", "qkv_copy")
    for name, options in (("matrix_mixing", stages.StageOptions()),
                          ("matrix_mixing", stages.StageOptions(matrix_loss="output_mse")),
                          ("attention_output", stages.StageOptions()), ("hidden_alignment", stages.StageOptions())):
        module = stages.StageModule(stages.STAGES[name], student, [teacher], options)
        with stages.teacher_attention([teacher], stages.STAGES[name].needs_attention_weights):
            loss, _ = module(batch_ids)
        assert loss.item() < 1e-9, (name, options.matrix_loss, loss.item())
    random_student = build_student(teacher, "attention", "random")
    module = stages.StageModule(stages.STAGES["hidden_alignment"], random_student, [teacher], stages.StageOptions())
    assert module(batch_ids)[0].item() > 1e-3
    assert teacher.config._attn_implementation != "eager"  # restored after the stage


@pytest.mark.parametrize("name", ["matrix_mixing", "attention_output", "hidden_alignment"])
def test_layer_local_stages_skip_the_teachers_head_and_get_the_same_loss(name, teacher, batch_ids, monkeypatch):
    student = build_student(teacher, "gla", "random", seed=0)
    module = stages.StageModule(stages.STAGES[name], student, [teacher], stages.StageOptions())
    positions = []  # positions the teacher's LM head projects in each forward
    handle = teacher.lm_head.register_forward_hook(lambda _, args, out: positions.append(args[0].shape[1]))
    real_trace = stages.trace_teacher

    def loss_of_one_step():
        with stages.teacher_attention([teacher], stages.STAGES[name].needs_attention_weights):
            return module(batch_ids)[0]

    try:
        loss = loss_of_one_step()
        monkeypatch.setattr(stages, "trace_teacher", lambda t, ids, logits=True: real_trace(t, ids))  # with logits
        with_logits = loss_of_one_step()
    finally:
        handle.remove()
    assert positions == [0, batch_ids.shape[1]]
    assert torch.equal(loss, with_logits)


@pytest.mark.parametrize("name", ["matrix_mixing", "attention_output", "hidden_alignment", "end_to_end",
                                  "attention_transfer", "multi_teacher"])
@pytest.mark.parametrize("student_name", ["gla", "mamba"])
def test_each_stage_lowers_its_own_loss(name, student_name, teacher, batch_ids):
    teachers = [teacher, _second_teacher(teacher)] if name == "multi_teacher" else [teacher]
    student = build_student(teacher, student_name, "random", seed=0)
    history = _train_stage(name, student, teachers, batch_ids)
    assert all(math.isfinite(v) for v in history)
    assert history[-1] < 0.9 * history[0], history


def test_mixer_stages_train_only_the_mixers(teacher, batch_ids):
    student = build_student(teacher, "gla", "random")
    before = {k: v.clone() for k, v in student.state_dict().items()}
    _train_stage("hidden_alignment", student, [teacher], batch_ids, steps=2)
    changed = {k for k, v in student.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".mixer." in k for k in changed)


def test_the_stages_fused_adamw_makes_the_per_tensor_update():
    torch.manual_seed(0)
    shapes = [(7, 5), (13,), (3, 4, 6)]
    fused_params = [torch.randn(s, requires_grad=True) for s in shapes]
    plain_params = [p.detach().clone().requires_grad_(True) for p in fused_params]
    fused = train.adamw(fused_params, 1e-2, 0.1)
    plain = torch.optim.AdamW(plain_params, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1, foreach=False)
    assert fused.defaults["fused"] is True
    for _ in range(5):
        grads = [torch.randn(s) for s in shapes]
        for params, optimizer in ((fused_params, fused), (plain_params, plain)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            optimizer.step()
    for a, b in zip(fused_params, plain_params):
        assert_close(a, b, tol=1e-6)


def test_budget_split_follows_the_reference_proportions():
    steps = run.split_budget(1000 * 64, ["matrix_mixing", "hidden_alignment", "end_to_end"], 64)
    assert steps == [26, 53, 920]
    assert run.split_budget(1000 * 64, ["hidden_alignment", "end_to_end"], 64) == [54, 945]
    with pytest.raises(UsageError, match="too small.*--tokens"):
        run.split_budget(30 * 64, ["matrix_mixing", "end_to_end"], 64)


def test_fixed_stage_budgets_come_first_and_the_rest_is_split():
    names = ["attention_output", "hidden_alignment", "end_to_end"]
    assert run.split_budget(1000 * 64, names, 64, {"attention_output": 300}) == [300, 38, 661]
    assert run.split_budget(1000 * 64, names, 64, {"attention_output": 300, "hidden_alignment": 200}) == [300, 200, 500]
    assert run.split_budget(1000 * 64, names, 64, {"matrix_mixing": 999}) == run.split_budget(1000 * 64, names, 64)
    with pytest.raises(UsageError, match="leave 0 tokens for end_to_end"):
        run.split_budget(1000 * 64, names, 64, {"attention_output": 600, "hidden_alignment": 400})
    assert run.parse_stage_budget("hidden_alignment=640,end_to_end=64", "--stage-tokens", 64) == \
        {"hidden_alignment": 10, "end_to_end": 1}
    for bad, message in (("nosuch=3", "unknown stage in --stage-steps 'nosuch'"), ("end_to_end=x", "NAME=INTEGER"),
                         ("end_to_end=0", "must be positive")):
        with pytest.raises(UsageError, match=message):
            run.parse_stage_budget(bad, "--stage-steps")


def test_plateau_compares_the_last_tenth_with_the_tenth_before():
    assert train.plateau([5.0] * 10 + [1.0] * 10)["plateaued"] is True  # flat over the last two tenths
    falling = train.plateau([10.0 - 0.1 * i for i in range(60)])
    assert falling["plateaued"] is False and falling["relative_drop"] > 0.02
    assert train.plateau([1.0])["plateaued"] is False  # one step says nothing


def test_stage_budgets_and_recall_fraction_reach_the_plan(tmp_path, tiny_teacher_dir, works_dir):
    args = run.build_parser().parse_args(["--student", "gla", *_cli(tmp_path, tiny_teacher_dir, works_dir),
                                          "--stages", "attention_output,end_to_end", "--stage-steps",
                                          "attention_output=7", "--recall-fraction", "0.6"])
    settings = run.settings_from_args(args)
    assert settings.stage_steps == {"attention_output": 7} and settings.data["recall_fraction"] == 0.6
    proportional = run.settings_from_args(run.build_parser().parse_args(
        ["--student", "gla", *_cli(tmp_path, tiny_teacher_dir, works_dir), "--split", "proportional"]))
    assert proportional.stage_steps == {}
    with pytest.raises(UsageError, match="recall-fraction must lie in"):
        run.settings_from_args(run.build_parser().parse_args(
            ["--student", "gla", *_cli(tmp_path, tiny_teacher_dir, works_dir), "--recall-fraction", "0.95"]))


def test_schedules_warm_up_then_decay():
    cosine = [train.learning_rate(s, 100, 1.0, "cosine", 0.1) for s in range(100)]
    wsd = [train.learning_rate(s, 100, 1.0, "wsd", 0.1) for s in range(100)]
    assert cosine[0] == wsd[0] == 0.1 and max(cosine) == 1.0 and cosine[-1] < 0.15
    assert wsd[50] == 1.0 and wsd[-1] < 0.1


# ------------------------------------------------------------------------------------------------- CLI
def _cli(tmp_path, teacher_dir, works_dir, *extra, throughput=False):
    return ["--teacher", str(teacher_dir), "--preset", "tiny", "--works-dir", str(works_dir), "--output-dir",
            str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results"), "--no-progress",
            *([] if throughput else ["--skip-throughput"]), *extra]


def _record(tmp_path) -> dict:
    (path,) = (tmp_path / "results" / "runs").glob("*.json")
    return json.loads(path.read_text())


@pytest.mark.slow
def test_run_writes_record_log_student_and_leaderboard_row(tmp_path, tiny_teacher_dir, works_dir):
    from transformers import AutoModelForCausalLM

    assert run.main(["--student", "gla", "--init", "qkv_copy+matrix_mixing",
                     *_cli(tmp_path, tiny_teacher_dir, works_dir, throughput=True)]) == 0
    record = _record(tmp_path)
    evaluation, throughput = record["evaluation"], record["throughput"]
    assert {"teacher", "student", "recovered", "summary", "items"} <= set(evaluation) and "ppl" in evaluation["student"]
    assert evaluation["recovered"]["ppl"] == pytest.approx(
        100 * evaluation["teacher"]["ppl"] / evaluation["student"]["ppl"])
    assert evaluation["eval_seed"] == 0 and evaluation["config"]["cloze_items"] == 1000
    assert evaluation["summary"]["pct_recovered"]["value"] == pytest.approx(evaluation["recovered"]["avg"])
    assert set(throughput["prefill_tokens_per_s"]) == {"student", "teacher", "floor"}
    assert [s["stage"] for s in record["stages"]] == ["matrix_mixing", "hidden_alignment", "end_to_end"]
    assert [s["steps"] for s in record["stages"]] == [1, 2, 36]
    assert record["settings"]["seed"] == 0 and record["machine"]["torch"] == torch.__version__
    assert record["activity"]["source"] in ("/proc/stat", None)  # what else ran on its CPUs meanwhile
    if record["activity"]["source"]:
        assert 0 < record["activity"]["this_process_share"] <= 1 and record["activity"]["wall_s"] > 0
    assert record["output_dir"] == f"<output-dir>/{record['run']}"  # no absolute local path in results
    out = tmp_path / "runs" / record["run"]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [row["global_step"] for row in log if "loss" in row] == list(range(1, 40))
    probes = [row for row in log if "probe" in row]  # recall at the trained length, at checkpoints and stage ends
    assert probes and set(probes[-1]["probe"]) == {"mqar", "passkey"}
    assert record["stages"][-1]["probes"][-1]["step"] == 36 and "plateau" in record["stages"][-1]
    import csv

    rows = list(csv.DictReader(open(tmp_path / "results" / "leaderboard.csv")))
    assert len(rows) == 1 and rows[0]["run_id"] == record["run"] and rows[0]["student"] == "gla"
    assert float(rows[0]["pct_recovered"]) == pytest.approx(evaluation["recovered"]["avg"], rel=1e-6)
    assert float(rows[0]["pct_language_lo"]) <= float(rows[0]["pct_language"]) <= float(rows[0]["pct_language_hi"])
    assert float(rows[0]["teacher_prefill_tok_s_64"]) > 0 and float(rows[0]["val_kl"]) >= 0
    assert rows[0]["teacher_sha"] == record["teacher_fingerprint"] == env.weights_fingerprint(str(tiny_teacher_dir))
    import students  # noqa: F401  registers the student class
    reloaded = AutoModelForCausalLM.from_pretrained(out / "student")
    assert reloaded.config.student == "gla"


@pytest.mark.slow
def test_evaluation_sets_do_not_follow_the_training_seed_and_the_teacher_is_scored_once(tmp_path, tiny_teacher_dir,
                                                                                        works_dir, monkeypatch):
    from bench.evaluation import tasks

    evaluated, real = [], tasks.evaluate_with_items

    def counted(model, tokenizer, config, progress=True):
        evaluated.append(type(model).__name__)
        return real(model, tokenizer, config, progress)

    monkeypatch.setattr(tasks, "evaluate_with_items", counted)
    records = []
    for seed in (0, 1):
        assert run.main(["--student", "gla", "--seed", str(seed), *_cli(tmp_path, tiny_teacher_dir, works_dir)]) == 0
        (path,) = (tmp_path / "results" / "runs").glob(f"*seed{seed}*.json")
        records.append(json.loads(path.read_text())["evaluation"])
    assert evaluated == ["LlamaForCausalLM", "StudentForCausalLM", "StudentForCausalLM"]  # the teacher once
    (cached,) = (tmp_path / "results" / "teacher_scores").glob("*.json")
    assert records[0]["teacher_scores_file"] == records[1]["teacher_scores_file"] == cached.name
    assert cached.name.startswith(env.weights_fingerprint(str(tiny_teacher_dir)))
    first, second = records
    assert first["config"] == second["config"] and first["eval_seed"] == second["eval_seed"] == 0
    assert first["teacher"] == second["teacher"] and first["items"]["teacher"] == second["items"]["teacher"]
    assert first["items"]["student"].keys() == second["items"]["student"].keys()


@pytest.mark.slow
def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, tiny_teacher_dir, works_dir):
    base = ["--student", "mamba", "--init", "qkv_copy+matrix_mixing", "--skip-eval", "--checkpoint-every", "1000"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run.main(base + _cli(straight, tiny_teacher_dir, works_dir)) == 0
    assert run.main(base + _cli(split, tiny_teacher_dir, works_dir, "--stop-after", "2")) == 0
    assert not (split / "results" / "runs").exists()
    assert run.main(base + _cli(split, tiny_teacher_dir, works_dir, "--resume", "--stop-after", "20")) == 0
    assert run.main(base + _cli(split, tiny_teacher_dir, works_dir, "--resume")) == 0
    a, b = _record(straight), _record(split)
    assert a["metrics"] == b["metrics"]
    assert [s["losses"] for s in a["stages"]] == [s["losses"] for s in b["stages"]]
    log = [json.loads(line) for line in (split / "runs" / b["run"] / "log.jsonl").read_text().splitlines()]
    assert [row["global_step"] for row in log if "loss" in row] == list(range(1, 40))  # none duplicated or missing
    straight_log = (straight / "runs" / a["run"] / "log.jsonl").read_text().splitlines()
    assert [row for row in log if "probe" in row] == [json.loads(x) for x in straight_log if '"probe"' in x]


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process(tmp_path, tiny_teacher_dir, works_dir):
    args = ["--student", "gla", "--init", "qkv_copy", "--skip-eval", "--tokens", str(20 * 4 * 32),
            "--stages", "hidden_alignment,end_to_end", "--dtype", "fp32"]  # equality to fp32 rounding, not bf16's
    assert run.main(args + _cli(tmp_path / "one", tiny_teacher_dir, works_dir)) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--standalone", "-m", "bench.run", *args,
                           *_cli(tmp_path / "two", tiny_teacher_dir, works_dir)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = _record(tmp_path / "one"), _record(tmp_path / "two")
    assert two["world_size"] == 2
    for stage_one, stage_two in zip(one["stages"], two["stages"]):
        assert stage_one["losses"] == pytest.approx(stage_two["losses"], rel=1e-4, abs=1e-6)
    assert one["metrics"] == pytest.approx(two["metrics"], rel=1e-4)


@pytest.mark.slow
def test_fsdp_sharded_teacher_equals_a_replicated_one(tmp_path, tiny_teacher_dir, works_dir):
    # The fused losses round differently with the batch split over ranks (and a sharded teacher feeds logits,
    # a whole one hidden states); Adam amplifies 1e-7 to ~1e-3 in 36 steps, so this test about sharding
    # compares the materialised losses (the fused ones are proven equal in test_distill_loss/test_mixer_loss).
    args = ["--student", "gla", "--init", "qkv_copy+matrix_mixing", "--skip-eval", "--tokens", str(40 * 4 * 32),
            "--no-fused-loss", "--no-fused-matrix-loss", "--dtype", "fp32"]
    assert run.main(args + _cli(tmp_path / "one", tiny_teacher_dir, works_dir)) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--standalone", "-m", "bench.run", *args, "--fsdp",
                           *_cli(tmp_path / "two", tiny_teacher_dir, works_dir)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = _record(tmp_path / "one"), _record(tmp_path / "two")
    assert two["world_size"] == 2 and two["fsdp_teachers"] and not one["fsdp_teachers"]
    for stage_one, stage_two in zip(one["stages"], two["stages"]):  # matrix mixing reads sharded attention
        # first step: same weights, only the summation order differs; later steps: Adam grows that 1e-7 rounding
        assert stage_one["losses"][0] == pytest.approx(stage_two["losses"][0], rel=1e-5, abs=1e-6)
        assert stage_one["losses"] == pytest.approx(stage_two["losses"], rel=1e-3, abs=1e-6)
    # 40 steps of all-reduced gradients in another summation order: equal to fp32 rounding, not bitwise
    assert one["metrics"] == pytest.approx(two["metrics"], rel=5e-3)


def test_non_finite_loss_stops_with_the_last_good_checkpoint(tmp_path, tiny_teacher_dir, works_dir, monkeypatch,
                                                             capsys):
    real = stages.STAGES["end_to_end"]
    calls = {"n": 0}

    def explode(batch):
        calls["n"] += 1
        loss, metrics = real.loss(batch)
        return (loss * float("nan") if calls["n"] > 7 else loss), metrics

    monkeypatch.setitem(stages.STAGES, "end_to_end", stages.Stage("end_to_end", explode, "all"))
    code = run.main(["--student", "gla", "--init", "qkv_copy", "--skip-eval",
                     *_cli(tmp_path, tiny_teacher_dir, works_dir, "--checkpoint-every", "3")])
    message = capsys.readouterr().err.strip()
    assert code == 3 and "loss is nan" in message and "last good checkpoint" in message
    state = train.checkpoint_state(next(p for p in (tmp_path / "runs").iterdir() if p.is_dir()) / "checkpoint")
    assert state["stage_index"] == 1 and state["step"] == 6  # checkpoints every 3 steps; step 7 was NaN


@pytest.mark.parametrize("argv, message", [
    (["--student", "transformer"], "unknown student 'transformer'; choose one of: mamba"),
    (["--student", "gla", "--init", "copy"], "unknown init 'copy'; choose one of: random, qkv_copy"),
    (["--student", "gla", "--stages", "hidden_alignment,distil"], "unknown stage 'distil'; choose one of: matrix_mixing"),
    (["--student", "gla", "--preset", "huge"], "unknown preset 'huge'; choose one of: tiny, default, grid, paper"),
    (["--student", "gla", "--tokens", "500"], "token budget 500 is too small"),
    (["--student", "gla", "--stages", "multi_teacher"], "needs at least 2 teachers"),
    (["--student", "gla", "--seq-len", "0"], "--seq-len must be positive"),
])
def test_bad_cli_input_gives_one_clear_line(argv, message, tmp_path, capsys, tiny_teacher_dir, works_dir):
    defaults = {"--preset": "tiny"} if "--preset" not in argv else {}
    argv = argv + [x for kv in defaults.items() for x in kv] + ["--teacher", str(tiny_teacher_dir), "--results-dir",
                                                                str(tmp_path / "r"), "--output-dir", str(tmp_path / "o")]
    assert run.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "r").exists() and not (tmp_path / "o").exists()


def test_output_dir_that_is_a_file_is_refused_before_writing(tmp_path, capsys, tiny_teacher_dir, works_dir):
    (tmp_path / "file").write_text("keep me")
    assert run.main(["--student", "gla", *_cli(tmp_path, tiny_teacher_dir, works_dir), "--output-dir",
                     str(tmp_path / "file")]) == 2
    assert "not a directory" in capsys.readouterr().err and (tmp_path / "file").read_text() == "keep me"


def test_context_longer_than_the_teacher_is_refused(tmp_path, capsys, tiny_teacher_dir, works_dir):
    assert run.main(["--student", "gla", *_cli(tmp_path, tiny_teacher_dir, works_dir), "--seq-len", "4096",
                     "--tokens", str(100 * 4 * 4096)]) == 2
    assert "longer than the model's context" in capsys.readouterr().err


def test_weights_fingerprint_follows_the_weight_bytes(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    first = env.weights_fingerprint(str(tmp_path))
    assert len(first) == 12 and first == env.weights_fingerprint(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"weightz")
    assert env.weights_fingerprint(str(tmp_path)) != first
    assert env.weights_fingerprint(str(tmp_path / "absent")) == "unknown"  # a hub id with no revision known


# ---------------------------------------------------------------------------------------- end_to_end stage
@pytest.fixture(scope="module")
def teacher_and_ids(tiny_teacher_dir):
    from students.surgery import load_teacher

    teacher = load_teacher(str(tiny_teacher_dir))
    ids = torch.randint(0, teacher.config.vocab_size, (2, 19), generator=torch.Generator().manual_seed(0))
    return teacher, ids


@pytest.mark.parametrize("student_name", ["gla", "llama_teacher_clone"])
def test_end_to_end_fused_loss_equals_materialised_loss(student_name, teacher_and_ids, monkeypatch):
    from students.surgery import build_student

    teacher, ids = teacher_and_ids
    calls = []
    monkeypatch.setattr(stages, "fused_distillation_loss",
                        lambda *args, **kwargs: calls.append(sorted(kwargs)) or fused_distillation_loss(*args, **kwargs))
    if student_name == "llama_teacher_clone":  # an HF model as the student: the `model.model` hidden path
        student = type(teacher)(teacher.config)
        student.load_state_dict(teacher.state_dict())
    else:
        student = build_student(teacher, student_name, init="random")
    results = []
    for fused in (True, False):
        options = stages.StageOptions(temperature=1.5, kl_weight=0.8, ce_weight=0.2, fused_loss=fused)
        module = stages.StageModule(stages.STAGES["end_to_end"], student, [teacher], options)
        student.zero_grad()
        loss, metrics = module(ids)
        loss.backward()
        results.append((loss.detach(), metrics, {n: p.grad.clone() for n, p in student.named_parameters()}))
    assert len(calls) == 1 and "teacher_hidden" in calls[0]  # fused once, from the teacher's hidden states
    (loss_f, metrics_f, grads_f), (loss_m, metrics_m, grads_m) = results
    torch.testing.assert_close(loss_f, loss_m, rtol=1e-5, atol=0)
    assert metrics_f == pytest.approx(metrics_m, rel=1e-5)
    assert grads_f.keys() == grads_m.keys()
    for name in grads_f:
        scale = grads_m[name].abs().max().clamp_min(1e-12)
        torch.testing.assert_close(grads_f[name] / scale, grads_m[name] / scale, rtol=0, atol=1e-4, msg=name)


def test_end_to_end_with_fsdp_sharded_teacher_passes_its_logits(tmp_path, monkeypatch):
    import torch.distributed as dist
    from transformers import LlamaConfig, LlamaForCausalLM

    from bench.distill.loop import shard_frozen

    config = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2)
    teacher, student = LlamaForCausalLM(config).eval(), LlamaForCausalLM(config)
    ids = torch.randint(0, 50, (2, 9))
    options = stages.StageOptions(fused_loss=False)
    want = stages.StageModule(stages.STAGES["end_to_end"], student, [teacher], options)(ids)[0]
    calls = []
    monkeypatch.setattr(stages, "fused_distillation_loss",
                        lambda *args, **kwargs: calls.append(sorted(kwargs)) or fused_distillation_loss(*args, **kwargs))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        shard_frozen(teacher)
        got = stages.StageModule(stages.STAGES["end_to_end"], student, [teacher], stages.StageOptions())(ids)[0]
    finally:
        dist.destroy_process_group()
    assert len(calls) == 1 and "teacher_logits" in calls[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)


# ------------------------------------------------------------------------------------------------ stage
@pytest.mark.parametrize("name", ["mamba", "rwkv", "linear_attention", "gla", "xlstm", "gated_deltanet"])
def test_matrix_mixing_stage_fused_equals_materialised(teacher, name, monkeypatch):
    calls = []
    monkeypatch.setattr(stages, "mixer_matrix_loss", lambda *a, **kw: calls.append(1) or mixer_matrix_loss(*a, **kw))
    student = build_student(teacher, name, "random", seed=0)
    ids = torch.randint(0, teacher.config.vocab_size, (2, 19), generator=torch.Generator().manual_seed(0))
    params = [p for layer in student.model.layers for p in layer.mixer.parameters()]
    results = {}
    for fused in (True, False):
        batch = stages.Batch(ids, student, [teacher], None, stages.StageOptions(fused_matrix_loss=fused))
        with stages.teacher_attention([teacher], stages.STAGES["matrix_mixing"].needs_attention_weights):
            loss, metrics = stages.STAGES["matrix_mixing"].loss(batch)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        results[fused] = (loss, [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)])
    assert len(calls) == len(student.model.layers) and teacher.config._attn_implementation != "capture_qk"
    assert teacher.config.num_key_value_heads < teacher.config.num_attention_heads  # GQA teacher
    assert_close(results[True][0], results[False][0], 1e-5)
    for got, want in zip(results[True][1], results[False][1]):
        assert (got - want).abs().max() <= 1e-4 * want.abs().max().clamp_min(1e-6)


# ------------------------------------------------------------------------------------------------ sweep
def test_sweep_runs_its_shard_once_and_skips_finished_runs(tmp_path, tiny_teacher_dir, works_dir, capsys):
    from bench.distill import sweep

    assert len(sweep.GRIDS["paper"]) == 8 * 3 * 3
    common = ["--", "--teacher", str(tiny_teacher_dir), "--preset", "tiny", "--works-dir", str(works_dir),
              "--output-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results"), "--no-progress",
              "--skip-eval", "--skip-throughput"]
    assert sweep.main(["--grid", "smoke", "--shard", "1/2", *common]) == 0
    records = [p.name for p in (tmp_path / "results" / "runs").glob("*.json")]
    assert len(records) == 1 and records[0].startswith("teacher__mamba__qkv_copy__tiny__")  # shard 1/2: 2nd config
    assert sweep.main(["--grid", "smoke", "--dry-run", *common]) == 0
    out = capsys.readouterr().out
    assert "1 done, 1 to run" in out and "done  teacher__mamba" in out and "todo  teacher__gla" in out
    assert sweep.main(["--grid", "smoke", "--dry-run", *common, "--tokens", "25600"]) == 0  # another budget
    assert "0 done, 2 to run" in capsys.readouterr().out  # is another run, not the finished one
    assert sweep.main(["--grid", "smoke", "--shard", "2/2", *common]) == 2
    assert sweep.main(["--grid", "nope", *common]) == 2


# ------------------------------------------------------------------------------------ reliability (bad input)
def _broken_teacher(tmp_path, tiny_teacher_dir, how: str):
    import shutil

    broken = tmp_path / f"teacher-{how}"
    shutil.copytree(tiny_teacher_dir, broken)
    weights = broken / "model.safetensors"
    if how == "missing":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return broken


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("how", ["truncated", "missing"])
def test_a_broken_teacher_is_one_error_line_for_run_and_throughput(how, tmp_path, tiny_teacher_dir, works_dir, capsys):
    from bench.perf import throughput

    broken = _broken_teacher(tmp_path, tiny_teacher_dir, how)
    assert run.main(["--student", "gla", *_cli(tmp_path, broken, works_dir)]) == 2
    assert "cannot load teacher weights" in _one_error_line(capsys)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()
    assert throughput.main(["--student", "gla", "--teacher", str(broken), "--lengths", "16"]) == 2
    assert "cannot load teacher weights" in _one_error_line(capsys)


@pytest.mark.parametrize("name, content", [("empty.txt", b""), ("noise.txt", None), ("noise.jsonl", None),
                                           ("noise.parquet", None)])
def test_an_unreadable_dataset_is_one_error_line(name, content, tmp_path, tiny_teacher_dir, works_dir, capsys):
    dataset = tmp_path / "data" / name
    dataset.parent.mkdir()
    dataset.write_bytes(content if content is not None else bytes(range(256)) * 40)
    assert run.main(["--student", "gla", *_cli(tmp_path, tiny_teacher_dir, works_dir), "--dataset", str(dataset)]) == 2
    assert str(dataset) in _one_error_line(capsys)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv, message", [
    (["--lr", "-1"], "--lr must be positive"), (["--lr", "nan"], "--lr must be positive"),
    (["--lr", "0"], "--lr must be positive"), (["--temperature", "0"], "--temperature must be positive"),
    (["--checkpoint-every", "0"], "--checkpoint-every must be positive"),
    (["--warmup-fraction", "-3"], "--warmup-fraction must lie in [0, 1)"),
    (["--kl-weight", "0", "--ce-weight", "0"], "both 0"), (["--threads", "0"], "--threads must be positive"),
    (["--lr", "abc"], "invalid float value"),
    (["--student", "linear_attention", "--mixer-option", "feature_map=nosuch"], "feature_map='nosuch' is not one of"),
    (["--mixer-option", "feature_map=elu"], "student gla has no option 'feature_map'"),
])
def test_bad_numbers_and_options_are_refused_not_replaced(argv, message, tmp_path, tiny_teacher_dir, works_dir, capsys):
    student = [] if "--student" in argv else ["--student", "gla"]
    assert run.main([*student, *_cli(tmp_path, tiny_teacher_dir, works_dir), *argv]) == 2
    assert message in _one_error_line(capsys)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def test_run_names_carry_every_setting_that_changes_the_result(tmp_path, tiny_teacher_dir, works_dir):
    def name(*extra):
        args = run.build_parser().parse_args(["--student", "linear_attention", *_cli(tmp_path, tiny_teacher_dir,
                                                                                    works_dir), *extra])
        return run.settings_from_args(args).run_name

    base = name()
    variants = [name("--tokens", "25600"), name("--lr", "0.002"), name("--seq-len", "16"), name("--batch-size", "2"),
                name("--dataset", str(works_dir)), name("--mixer-option", "feature_map=hedgehog"),
                name("--temperature", "2"), name("--warmup-fraction", "0.1")]
    assert len({base, *variants}) == len(variants) + 1
    assert name() == base and name("--checkpoint-every", "7") == base  # how often it saves changes nothing
    assert name("--seed", "1").replace("seed1", "seed0") == base  # seeds of one configuration share the hash


def test_the_identity_holds_the_precision_auto_resolves_to_on_this_machine(tmp_path, tiny_teacher_dir, works_dir,
                                                                           monkeypatch):
    def settings(has_bf16, *extra):
        monkeypatch.setattr(run.train_lib, "use_bf16", lambda dtype, device: dtype == "bf16" or
                            (dtype == "auto" and has_bf16))
        args = run.build_parser().parse_args(["--student", "gla", *_cli(tmp_path, tiny_teacher_dir, works_dir), *extra])
        return run.settings_from_args(args)

    with_bf16, without = settings(True), settings(False)
    assert (with_bf16.dtype, without.dtype) == ("bf16", "fp32")
    assert with_bf16.run_name != without.run_name  # one flag, two computations: two names, two records
    assert settings(True, "--dtype", "bf16").run_name == with_bf16.run_name
    assert settings(True, "--dtype", "fp32").run_name == without.run_name


def test_machine_names_the_cpu_features_that_set_speed_and_precision():
    from bench import provenance

    found = provenance.machine()
    if found["device"] == "cpu":
        assert found["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and found["device_name"]
        # the record says what decided the precision of a run with --dtype auto here
        assert found["cpu_bf16_kernels"] is train.use_bf16("auto", torch.device("cpu"))


def test_auto_precision_takes_bf16_only_where_the_cpu_multiplies_it_in_hardware(monkeypatch):
    # oneDNN reports bf16 on every AVX-512 CPU; without AVX512-BF16 or AMX it converts in software and a bf16
    # training step ran at a third of fp32's rate, so `auto` must stay fp32 there
    for onednn, features, expected in [(True, set(), False), (True, {"avx512_bf16"}, True),
                                       (True, {"amx_tile"}, True), (False, {"avx512_bf16", "amx_tile"}, False)]:
        monkeypatch.setattr(env, "_onednn_reports_bf16", lambda: onednn)
        monkeypatch.setattr(env, "_cpu_feature", lambda name: name in features)
        assert env.cpu_has_bf16_kernels() is expected
        assert train.use_bf16("auto", torch.device("cpu")) is expected
        assert train.use_bf16("fp32", torch.device("cpu")) is False and train.use_bf16("bf16", torch.device("cpu"))


def test_forced_bf16_on_a_cpu_without_bf16_instructions_warns_once(tmp_path, tiny_teacher_dir, works_dir, capsys,
                                                                    monkeypatch):
    common = [*_cli(tmp_path, tiny_teacher_dir, works_dir), "--skip-eval", "--stop-after", "1", "--student", "gla"]
    for hardware, expected in [(False, 1), (True, 0)]:
        monkeypatch.setattr(env, "cpu_has_bf16_kernels", lambda: hardware)
        assert run.main([*common, "--dtype", "bf16", "--run-name", f"bf16_{hardware}"]) == 0
        assert capsys.readouterr().err.count("neither AVX512-BF16 nor AMX") == expected
    monkeypatch.setattr(env, "cpu_has_bf16_kernels", lambda: False)
    assert run.main([*common, "--dtype", "fp32", "--run-name", "fp32"]) == 0
    assert "AVX512-BF16" not in capsys.readouterr().err


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="the fallback reads Linux's /proc/cpuinfo")
def test_cpu_feature_fallback_agrees_with_torchs_probe(monkeypatch):
    # avx2 as well: x86 CPUs of these years have it, so the flags must be read, not just answered False
    for name in ("avx512_bf16", "amx_tile", "avx2"):
        probe = getattr(torch.cpu, f"_is_{name}_supported", None)
        if probe is None:
            continue
        told = bool(probe())
        monkeypatch.delattr(torch.cpu, f"_is_{name}_supported")
        assert env._cpu_feature(name) is told


def test_resume_refuses_other_settings_and_may_lower_the_learning_rate(tmp_path, tiny_teacher_dir, works_dir, capsys):
    common = [*_cli(tmp_path, tiny_teacher_dir, works_dir), "--run-name", "fixed", "--skip-eval"]
    assert run.main(["--student", "gla", *common, "--stop-after", "3"]) == 0
    assert "continue with --resume" in capsys.readouterr().err
    assert run.main(["--student", "mamba", *common, "--resume"]) == 2
    assert "student: 'gla' -> 'mamba'" in _one_error_line(capsys)
    assert run.main(["--student", "gla", *common, "--resume", "--tokens", "25600"]) == 2
    assert "tokens: 5120 -> 25600" in _one_error_line(capsys)
    assert run.main(["--student", "gla", *common, "--resume", "--lr", "1e-4"]) == 0
    record = _record(tmp_path)
    assert record["lr_history"][0][0] == 0 and record["lr_history"][1][0] == 3
    assert set(record["lr_history"][1][1].values()) == {1e-4} and record["settings"]["lrs"]["end_to_end"] == 1e-4


def test_after_a_blow_up_the_last_good_checkpoint_resumes_with_a_lower_learning_rate(tmp_path, tiny_teacher_dir,
                                                                                    works_dir, capsys):
    from safetensors.torch import load_file

    common = ["--student", "gla", "--init", "qkv_copy", "--skip-eval", "--run-name", "hot",
              *_cli(tmp_path, tiny_teacher_dir, works_dir, "--checkpoint-every", "2")]
    assert run.main([*common, "--lr", "1e6"]) == 3
    assert "last good checkpoint" in capsys.readouterr().err
    state = train.checkpoint_state(tmp_path / "runs" / "hot" / "checkpoint")
    weights = load_file(f"{state['path']}/student.safetensors")
    assert all(torch.isfinite(w).all() and w.abs().max() < 1e3 for w in weights.values())  # not the blown-up ones
    assert run.main([*common, "--lr", "1e-3", "--resume"]) == 0
    assert math.isfinite(_record(tmp_path)["metrics"]["val_kl"])


def test_a_run_in_use_by_another_process_is_refused(tmp_path, tiny_teacher_dir, works_dir, capsys):
    from bench.files import exclusive

    (tmp_path / "runs").mkdir()
    with exclusive(tmp_path / "runs" / ".busy.lock"):
        assert run.main(["--student", "gla", *_cli(tmp_path, tiny_teacher_dir, works_dir), "--run-name", "busy"]) == 2
    assert "being written by another process" in _one_error_line(capsys)
    assert not (tmp_path / "runs" / "busy").exists()


def test_leftovers_of_a_killed_write_are_cleared_and_the_student_is_written_whole(tmp_path, tiny_teacher_dir,
                                                                                  works_dir, monkeypatch):
    from students.modeling import StudentForCausalLM

    out = tmp_path / "runs" / "whole"
    (out / ".checkpoint-killed").mkdir(parents=True)  # what a kill -9 during a checkpoint write leaves
    (out / ".checkpoint-killed" / "student.safetensors").write_bytes(b"x" * 1000)
    common = ["--student", "gla", "--skip-eval", "--run-name", "whole", *_cli(tmp_path, tiny_teacher_dir, works_dir)]
    real = StudentForCausalLM.save_pretrained

    def dies_after_the_config(self, directory, **kwargs):
        self.config.save_pretrained(directory)
        raise KeyboardInterrupt  # a kill in the middle of the write

    monkeypatch.setattr(StudentForCausalLM, "save_pretrained", dies_after_the_config)
    with pytest.raises(KeyboardInterrupt):
        run.main(common)
    assert not (out / "student").exists() and not (out / ".checkpoint-killed").exists()
    monkeypatch.setattr(StudentForCausalLM, "save_pretrained", real)
    assert run.main([*common, "--resume"]) == 0
    assert {p.name for p in (out / "student").iterdir()} >= {"config.json", "model.safetensors"}
    assert not [p for p in out.iterdir() if p.name.startswith(".student-")]


def _clock_moved_by_checkpoints(monkeypatch) -> tuple[dict, list]:
    """A fake clock for the run (`run.time.time`) that moves 10 s at each training checkpoint and otherwise only
    when a test moves it; returns the clock and the list of checkpoints seen."""
    clock, ticks = {"now": 1000.0}, []
    monkeypatch.setattr(run.time, "time", lambda: clock["now"])
    real_train = train.train

    def ticking_train(*args, **kwargs):
        def tick(state, inner=kwargs["on_checkpoint"]):
            clock["now"] += 10.0
            ticks.append(1)
            return inner(state)
        return real_train(*args, **{**kwargs, "on_checkpoint": tick})

    monkeypatch.setattr(run.train_lib, "train", ticking_train)
    return clock, ticks


def test_seconds_count_every_invocation_of_a_resumed_run(tmp_path, tiny_teacher_dir, works_dir, monkeypatch):
    common = ["--student", "gla", "--skip-eval", "--run-name", "timed", *_cli(tmp_path, tiny_teacher_dir, works_dir)]
    _, ticks = _clock_moved_by_checkpoints(monkeypatch)
    assert run.main([*common, "--stop-after", "3"]) == 0
    first = len(ticks)
    assert run.main([*common, "--resume"]) == 0
    record = _record(tmp_path)
    assert first >= 2 and len(ticks) > first
    assert record["train_seconds"] == pytest.approx(10.0 * len(ticks))  # both invocations, not the last one
    assert record["seconds"] >= record["train_seconds"]


def test_stage_rates_count_training_steps_only_over_every_invocation(tmp_path, tiny_teacher_dir, works_dir,
                                                                     monkeypatch):
    """With a clock that moves 1 s per training forward, 10 s per checkpoint and 100 s per recall probe, each
    stage's tokens/s is tokens over its steps' seconds, across a stop and a resume."""
    clock, ticks = _clock_moved_by_checkpoints(monkeypatch)
    real_forward, real_train = stages.StageModule.forward, run.train_lib.train

    def forward_taking_a_second(self, *args, **kwargs):
        clock["now"] += 1.0
        return real_forward(self, *args, **kwargs)

    def train_with_slow_probes(*args, **kwargs):
        def probe(student, inner=kwargs["probe"]):
            clock["now"] += 100.0
            return inner(student)
        return real_train(*args, **{**kwargs, "probe": probe})

    monkeypatch.setattr(stages.StageModule, "forward", forward_taking_a_second)
    monkeypatch.setattr(run.train_lib, "train", train_with_slow_probes)
    common = ["--student", "gla", "--skip-eval", "--run-name", "rates", "--checkpoint-every", "5",
              *_cli(tmp_path, tiny_teacher_dir, works_dir)]
    assert run.main([*common, "--stop-after", "12"]) == 0
    assert run.main([*common, "--resume"]) == 0
    record = _record(tmp_path)
    for stage in record["stages"]:
        assert stage["step_seconds"] == stage["steps"]  # the stopped step's forward counts once, when it is redone
        assert stage["tokens_per_s"] == pytest.approx(stage["tokens"] / stage["steps"])
        assert stage["probe_seconds"] == 100.0 * len(stage["probes"])
    # every checkpoint's 10 s but those of the one the stop wrote (the clock moved after it was saved) and of
    # the one written after the last stage, once training is over
    assert sum(s["checkpoint_seconds"] for s in record["stages"]) == 10.0 * (len(ticks) - 2)
    parts = sum(s["step_seconds"] + s["probe_seconds"] + s["checkpoint_seconds"] for s in record["stages"])
    assert sum(s["seconds"] for s in record["stages"]) == parts + 1.0  # + the stopped step's first forward


def test_phase_seconds_say_where_the_wall_time_went_and_add_up_to_it(tmp_path, tiny_teacher_dir, works_dir,
                                                                       monkeypatch):
    from bench.evaluation import tasks, teacher_cache
    from students import surgery
    from students.modeling import StudentForCausalLM

    clock, ticks = _clock_moved_by_checkpoints(monkeypatch)

    def taking(seconds, function):  # `function`, with the clock moved on by `seconds` while it runs
        def timed(*args, **kwargs):
            clock["now"] += seconds
            return function(*args, **kwargs)
        return timed

    monkeypatch.setattr(surgery, "build_student", taking(13.0, surgery.build_student))
    monkeypatch.setattr(run, "validation_metrics", taking(3.0, run.validation_metrics))
    monkeypatch.setattr(teacher_cache, "teacher_scores", taking(5.0, lambda *a, **k: ({}, {}, None)))
    monkeypatch.setattr(tasks, "evaluate_with_items", taking(11.0, lambda *a, **k: ({}, {})))
    monkeypatch.setattr(run, "_throughput", taking(7.0, lambda *a, **k: {}))
    monkeypatch.setattr(StudentForCausalLM, "save_pretrained", taking(2.0, StudentForCausalLM.save_pretrained))
    assert run.main(["--student", "gla", "--run-name", "phases",
                     *_cli(tmp_path, tiny_teacher_dir, works_dir, throughput=True)]) == 0
    record = _record(tmp_path)
    assert ticks
    assert record["phase_seconds"] == {"setup": 13.0, "training": 10.0 * len(ticks), "validation": 3.0,
                                       "evaluation_teacher": 5.0, "evaluation_student": 11.0, "throughput": 7.0,
                                       "save": 2.0}
    assert sum(record["phase_seconds"].values()) == pytest.approx(record["seconds"])


def test_threads_flag_sets_torch_threads(tmp_path, tiny_teacher_dir, works_dir):
    before = torch.get_num_threads()
    try:
        assert run.main(["--student", "gla", "--skip-eval", "--threads", "1",
                         *_cli(tmp_path, tiny_teacher_dir, works_dir)]) == 0
        assert _record(tmp_path)["threads"] == 1
    finally:
        torch.set_num_threads(before)


def test_a_sweep_records_a_crashing_run_and_goes_on(tmp_path, tiny_teacher_dir, works_dir, monkeypatch, capsys):
    from bench.distill import sweep

    real = run.main
    monkeypatch.setattr(sweep.run_lib, "main",
                        lambda argv: (_ for _ in ()).throw(RuntimeError("boom")) if "gla" in argv else real(argv))
    common = ["--", *_cli(tmp_path, tiny_teacher_dir, works_dir), "--skip-eval"]
    assert sweep.main(["--grid", "smoke", *common]) == 1
    out, err = capsys.readouterr()
    assert "RuntimeError: boom" in out and "1 of 2 runs failed" in err
    assert [p.name.split("__")[1] for p in (tmp_path / "results" / "runs").glob("*.json")] == ["mamba"]


def test_sweep_workers_share_the_cores(tmp_path, tiny_teacher_dir, works_dir, monkeypatch):
    from bench.distill import sweep

    seen = []
    monkeypatch.setattr(sweep, "_run_in_subprocess", lambda argv: seen.append(argv) or (0, ""))
    monkeypatch.setattr(sweep.os, "cpu_count", lambda: 4)
    assert sweep.main(["--grid", "smoke", "--workers", "2", "--", *_cli(tmp_path, tiny_teacher_dir, works_dir)]) == 0
    assert len(seen) == 2 and all(argv[argv.index("--threads") + 1] == "2" for argv in seen)
    assert sweep.main(["--grid", "smoke", "--workers", "0"]) == 2


# ------------------------------------------------------------------------------------------------- hybrids
def test_a_hybrid_trains_only_its_replaced_layers(tmp_path, tiny_teacher_dir, works_dir):
    from safetensors.torch import load_file

    assert run.main(["--student", "gla", "--keep-attention", "1", "--skip-eval",
                     *_cli(tmp_path, tiny_teacher_dir, works_dir)]) == 0
    record = _record(tmp_path)
    assert record["keep_attention"] == [1] and "+keep1__" in record["run"]
    teacher = load_file(str(tiny_teacher_dir / "model.safetensors"))
    student = load_file(str(tmp_path / "runs" / record["run"] / "student" / "model.safetensors"))
    kept = {k: v for k, v in student.items() if k.startswith("model.layers.1.mixer.")}
    assert kept and all(torch.equal(v, teacher[k.replace(".mixer.", ".self_attn.")]) for k, v in kept.items())
    assert not torch.equal(student["model.layers.0.mixer.q_proj.weight"], teacher["model.layers.0.self_attn.q_proj.weight"])
    assert record["state_bytes_per_layer"][1] > record["state_bytes_per_layer"][0]  # a KV cache beside a state


def test_kl_selection_ranks_each_layer_by_its_own_short_run(tmp_path, tiny_teacher_dir, works_dir):
    assert run.main(["--student", "gla", "--keep-attention-count", "1", "--select", "kl", "--rank-tokens", "2560",
                     "--skip-eval", *_cli(tmp_path, tiny_teacher_dir, works_dir)]) == 0
    records = {json.loads(p.read_text())["run"]: json.loads(p.read_text())
               for p in (tmp_path / "results" / "runs").glob("*.json")}
    main = next(r for r in records.values() if r["keep_ranking"])
    scores = main["keep_ranking"]["val_kl_with_only_this_layer_replaced"]
    assert len(scores) == 2 and len(records) == 3  # one ranking run per layer, then the run itself
    assert main["keep_attention"] == [scores.index(max(scores))]
    for layer, name in enumerate(main["keep_ranking"]["runs"]):
        assert records[name]["keep_attention"] == [1 - layer] and records[name]["metrics"]["val_kl"] == scores[layer]


def test_recall_selection_reuses_the_ranking_runs_and_keeps_the_layer_whose_replacement_loses_most_mqar(
        tmp_path, tiny_teacher_dir, works_dir, monkeypatch):
    scored = []

    def fake_mqar(student_dir, length):  # the real scorer is tested through bench.evaluate; here: the rule
        scored.append((student_dir.parent.name, length))
        return {0: 0.9, 1: 0.2}[len(scored) - 1]

    argv = ["--student", "gla", "--keep-attention-count", "1", "--rank-tokens", "2560", "--skip-eval",
            *_cli(tmp_path, tiny_teacher_dir, works_dir)]
    assert run.main(argv + ["--select", "kl"]) == 0
    monkeypatch.setattr(run, "ranked_student_mqar", fake_mqar)
    assert run.main(argv + ["--select", "recall"]) == 0
    records = [json.loads(p.read_text()) for p in (tmp_path / "results" / "runs").glob("*.json")]
    assert len(records) == 4  # two ranking runs shared by both selections, then each selection's own run
    chosen = next(r for r in records if r["keep_ranking"] and "mqar_with_only_this_layer_replaced" in r["keep_ranking"])
    assert chosen["keep_ranking"]["mqar_with_only_this_layer_replaced"] == [0.9, 0.2]
    assert chosen["keep_attention"] == [1] and [name for name, _ in scored] == chosen["keep_ranking"]["runs"]
    assert "+keep1recall__" in chosen["run"]  # the name says how the layers were chosen
    assert all(length == chosen["settings"]["seq_len"] for _, length in scored)


def test_the_ranked_students_mqar_is_their_teacher_forced_accuracy(tmp_path, tiny_teacher_dir):
    from bench.evaluation import tasks
    from bench.evaluation.scoring import load_model

    accuracy = run.ranked_student_mqar(tiny_teacher_dir, 64)
    model, tokenizer = load_model(str(tiny_teacher_dir))
    config = tasks.EvalConfig(recall_lengths=(64,))
    assert accuracy == tasks.recall_scores(model, tokenizer, config, progress=False)["recall_mqar_64"]
    with pytest.raises(run.UsageError, match="no student at"):
        run.ranked_student_mqar(tmp_path / "missing", 64)


@pytest.mark.parametrize("argv, message", [
    (["--keep-attention", "0,1"], "keeps all 2 layers"), (["--keep-attention", "5"], "--keep-attention '5'"),
    (["--keep-attention", "0", "--keep-attention-count", "1"], "not both"),
    (["--keep-attention-count", "2"], "must lie in 1..1"),
    (["--keep-attention-count", "1", "--select", "kl", "--rank-tokens", "1280"], "use --rank-tokens 2350"),
])
def test_bad_hybrid_settings_are_refused(argv, message, tmp_path, tiny_teacher_dir, works_dir, capsys):
    assert run.main(["--student", "gla", *_cli(tmp_path, tiny_teacher_dir, works_dir), *argv]) == 2
    assert message in _one_error_line(capsys)
