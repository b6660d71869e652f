"""`slm distill --teacher T STUDENT --data PATH --out DIR`: train a student on a teacher's distributions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slmkit.cli.common import AllowPickleOpt, ForceOpt, JsonOpt, ModelArg, OutOpt, TrustRemoteCodeOpt
from slmkit.cli.finetune import (BatchSizeOpt, DataOpt, DeviceOpt, DtypeOpt, EpochsOpt, EvalDataOpt, EvalEveryOpt,
                                 GradAccumOpt, LoraAlphaOpt, LoraDropoutOpt, LoraOpt, LoraRankOpt, LoraTargetsOpt,
                                 LrOpt, MaxLengthOpt, MaxStepsOpt, MergeOpt, PackingOpt, ResumeOpt, SaveEveryOpt,
                                 SeedOpt, report_training, training_bar)


def distill_command(
    student: ModelArg = ...,
    teacher: Annotated[str, typer.Option("--teacher", "-t", help="Alias, directory, .gguf or hub id.")] = ...,
    data: DataOpt = ...,
    out: OutOpt = ...,
    task: Annotated[str | None, typer.Option(help="chat | completion | text | classification "
                                                  "[default: from the file].")] = None,
    loss: Annotated[str, typer.Option(help="fkl | rkl | jsd | tvd: the divergence from the teacher.")] = "fkl",
    temperature: Annotated[float, typer.Option(help="Softens both distributions (the loss is scaled by its "
                                                    "square).")] = 1.0,
    alpha_ce: Annotated[float, typer.Option(help="Share of the hard-label cross-entropy in the loss.")] = 0.0,
    beta: Annotated[float, typer.Option(help="jsd: the teacher's weight in the mixture (0 is fkl, 1 rkl).")] = 0.5,
    teacher_cache: Annotated[Path | None, typer.Option(help="Keep the teacher's top-k log-probabilities here, "
                                                            "computed once; later epochs and runs read them.")] = None,
    top_k_logits: Annotated[int, typer.Option(help="Tokens per position the teacher cache keeps.")] = 100,
    hidden_loss: Annotated[str | None, typer.Option(help="mse | cosine: also match the teacher's hidden states "
                                                         "(TinyBERT); projected when the widths differ.")] = None,
    layer_map: Annotated[str, typer.Option(help="auto (uniform, last block to last) or student:teacher pairs "
                                                "like 1:2,2:4,3:6 (0 is the embeddings).")] = "auto",
    hidden_weight: Annotated[float, typer.Option(help="Weight of the hidden-state loss.")] = 1.0,
    attention_loss: Annotated[bool, typer.Option("--attention-loss", help="Also match the mapped blocks' attention "
                                                 "distributions (TinyBERT/MiniLM; same head count).")] = False,
    attention_weight: Annotated[float, typer.Option(help="Weight of the attention loss.")] = 1.0,
    on_policy_ratio: Annotated[float, typer.Option(help="Share of batches the student answers itself, scored by "
                                                        "the teacher (GKD; chat/completion data).")] = 0.0,
    on_policy_max_new_tokens: Annotated[int, typer.Option(help="Longest on-policy answer.")] = 128,
    on_policy_temperature: Annotated[float, typer.Option(help="Sampling temperature of on-policy answers.")] = 1.0,
    lora: LoraOpt = False, lora_rank: LoraRankOpt = 8, lora_alpha: LoraAlphaOpt = 16,
    lora_dropout: LoraDropoutOpt = 0.05, lora_targets: LoraTargetsOpt = "all-linear", merge: MergeOpt = False,
    epochs: EpochsOpt = 1.0, max_steps: MaxStepsOpt = None, lr: LrOpt = None, batch_size: BatchSizeOpt = 8,
    grad_accum: GradAccumOpt = 1, max_length: MaxLengthOpt = 512, packing: PackingOpt = False,
    eval_data: EvalDataOpt = None, eval_every: EvalEveryOpt = 0, save_every: SaveEveryOpt = 100, seed: SeedOpt = 0,
    resume: ResumeOpt = False, device: DeviceOpt = "auto", dtype: DtypeOpt = "auto", force: ForceOpt = False,
    allow_pickle: AllowPickleOpt = False, trust_remote_code: TrustRemoteCodeOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Distill a teacher into a student: the student learns the teacher's next-token distributions.

    Teacher and student must share token ids (checked before the first step). A chat distils on the
    assistant's tokens only; a classifier on the teacher's soft labels. Checkpoints and --resume as in
    slm finetune.

    Examples:
      slm student smollm2-135m-instruct --depth 20 --out out/student
      slm distill out/student -t smollm2-135m-instruct --data wiki.txt --max-steps 500 --out out/kd
      slm distill out/clf-student -t out/clf --data train.tsv --temperature 2 --alpha-ce 0.5 --out out/kd-clf
      slm student out/clf --layers 0,2,4 --out out/clf-3
      slm distill out/clf-3 -t out/clf --data train.tsv --hidden-loss mse --attention-loss --out out/kd-clf-3
      slm distill out/student -t smollm2-135m-instruct --data chats.jsonl --loss jsd --on-policy-ratio 0.5 --out out/gkd
    """
    import slmkit
    from slmkit.logs import quiet_libraries

    config = slmkit.DistillConfig(
        data=str(data), task=task, loss=loss, temperature=temperature, alpha_ce=alpha_ce, beta=beta,
        teacher_cache=str(teacher_cache) if teacher_cache else None, top_k_logits=top_k_logits,
        hidden_loss=hidden_loss, layer_map=layer_map, hidden_weight=hidden_weight, attention_loss=attention_loss,
        attention_weight=attention_weight, on_policy_ratio=on_policy_ratio,
        on_policy_max_new_tokens=on_policy_max_new_tokens, on_policy_temperature=on_policy_temperature, lora=lora,
        lora_rank=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout, lora_targets=lora_targets, merge=merge,
        epochs=epochs, max_steps=max_steps, lr=lr, batch_size=batch_size, grad_accum=grad_accum,
        max_length=max_length, packing=packing, eval_data=str(eval_data) if eval_data else None,
        eval_every=eval_every, save_every=save_every, seed=seed, resume=resume, device=device, dtype=dtype,
        allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    quiet_libraries()
    with training_bar() as progress:
        result = slmkit.distill(teacher, student, out, config, progress=progress, force=force)
    report_training(result, {"teacher": teacher, "student": student, "out": str(out)}, f"{student} — distilled",
                    json_output)
