"""Fine-tuning the teacher with trl: SFT on seed rationales, KTO against shopper behaviour.

Both train a LoRA adapter (peft) through trl's own trainers, with the device and precision
of the stage's hardware (adore.hardware: never trl's default bf16, which on a CPU without
native bf16 makes a KTO step five times slower), then merge it into the teacher so the next
stage trains a fresh adapter on top.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]


def lora_config(rank: int, alpha: int):
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.05, task_type="CAUSAL_LM", target_modules=TARGET_MODULES)


def _common_args(out: Path, teacher, seed: int) -> dict:
    size = sum(p.numel() for p in teacher.model.parameters())
    return {"output_dir": str(out), "logging_steps": 1, "save_strategy": "no", "report_to": [], "disable_tqdm": False,
            "dataloader_num_workers": 0, "seed": seed, **teacher.hardware.trainer_args(size)}


def _losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def _finish(teacher, trainer, adapter_dir: Path, scratch: Path) -> None:
    trainer.model.save_pretrained(adapter_dir)
    shutil.rmtree(scratch, ignore_errors=True)
    teacher.model = trainer.model.merge_and_unload()
    teacher.model.eval()


def sft_trainer(teacher, examples: list[tuple[str, str]], scratch: Path, cfg, seed: int = 0):
    """trl's SFTTrainer on (prompt, completion) pairs: loss on the completion tokens only, LoRA via peft_config."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
                     gradient_accumulation_steps=cfg.gradient_accumulation_steps, learning_rate=cfg.learning_rate,
                     lr_scheduler_type="constant", completion_only_loss=True, packing=False,
                     **_common_args(scratch, teacher, seed))
    data = Dataset.from_list([{"prompt": p, "completion": c} for p, c in examples])
    return SFTTrainer(model=teacher.model, args=args, train_dataset=data, processing_class=teacher.tokenizer,
                      peft_config=lora_config(cfg.lora_rank, cfg.lora_alpha))


def sft(teacher, examples: list[tuple[str, str]], adapter_dir: Path, cfg, seed: int = 0) -> dict:
    """Supervised LoRA fine-tuning on (prompt, completion); the adapter is saved and merged into the teacher."""
    scratch = Path(adapter_dir).parent / "sft-trainer"
    trainer = sft_trainer(teacher, examples, scratch, cfg, seed)
    t0 = time.time()
    result = trainer.train()
    seconds = time.time() - t0
    losses = _losses(trainer)
    _finish(teacher, trainer, adapter_dir, scratch)
    return {"sftSteps": result.global_step, "sftFirstLoss": losses[0] if losses else None,
            "sftLastLoss": losses[-1] if losses else None, "sftSeconds": round(seconds, 1),
            "sftSecondsPerStep": round(seconds / max(result.global_step, 1), 2)}


def kto_trainer(teacher, rows: list[dict], scratch: Path, cfg, seed: int = 0):
    """trl's KTOTrainer: the reference model is the teacher with the new adapter disabled; the classes are
    balanced as trl advises (desirable_weight * n_desirable / (undesirable_weight * n_undesirable) in [1, 4/3])."""
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    n_des = sum(r["label"] for r in rows)
    n_und = len(rows) - n_des
    und_w = cfg.undesirable_weight * max(1.0, n_des / max(n_und, 1))
    des_w = cfg.desirable_weight * max(1.0, n_und / max(n_des, 1))
    args = KTOConfig(max_steps=cfg.steps, per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
                     beta=cfg.beta, desirable_weight=des_w, undesirable_weight=und_w, max_length=cfg.max_length,
                     **_common_args(scratch, teacher, seed))
    return KTOTrainer(model=teacher.model, args=args, train_dataset=Dataset.from_list(rows),
                      processing_class=teacher.tokenizer, peft_config=lora_config(cfg.lora_rank, cfg.lora_alpha))


def kto(teacher, rows: list[dict], adapter_dir: Path, cfg, seed: int = 0) -> dict:
    """KTO on {prompt, completion, label} rows; the adapter is saved and merged into the teacher."""
    scratch = Path(adapter_dir).parent / "kto-trainer"
    trainer = kto_trainer(teacher, rows, scratch, cfg, seed)
    t0 = time.time()
    result = trainer.train()
    seconds = time.time() - t0
    losses = _losses(trainer)
    des_w, und_w = trainer.args.desirable_weight, trainer.args.undesirable_weight
    _finish(teacher, trainer, adapter_dir, scratch)
    return {"ktoSteps": result.global_step, "ktoFirstLoss": losses[0] if losses else None,
            "ktoLastLoss": losses[-1] if losses else None, "desirableWeight": round(des_w, 3),
            "undesirableWeight": round(und_w, 3), "ktoSeconds": round(seconds, 1),
            "ktoSecondsPerStep": round(seconds / max(result.global_step, 1), 2)}
