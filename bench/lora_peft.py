"""LoRA adapters trained by ferrolm, loaded by PEFT onto the same base: same outputs?

    /work/venv-hf/bin/python bench/lora_peft.py [--ferrolm target/release/ferrolm] [--base RUN]

Prints one JSON row per check and, last, whether every `… max_abs_diff` is below 1e-4 (keys
marked "(info)" are reported, not judged). Needs torch, transformers and peft; skips with a
message when they are missing.

CAUSAL_LM (`sft`). For each base — the committed Hugging Face fixtures gpt2_tied (GPT-2: q/k/v
adapters become one c_attn adapter) and qwen2_tied (q/k/v biases), and optionally a ferrolm
run (--base, exported with `ferrolm export --format hf` first) — the script
  1. runs `ferrolm sft --set lora.rank=8 …` on generated instruction records,
  2. scores a text with the LoRA run (`ferrolm score --json`: the adapters folded in),
  3. loads the base with transformers and the run's `adapter/` with
     `PeftModel.from_pretrained`, scores the same token ids, and reports max |Δ log-prob|,
  4. does the same with `ferrolm export --format peft` and with the merged model from
     `ferrolm export --format hf --merge-lora` loaded by plain transformers.

QLoRA (`sft --set lora.quant=q8_0|q4_k|f16`: the frozen base's block weights held quantized
while the adapters train). Judged: the merged export (adapters folded into the f32 base)
against PEFT on the f32 base. Reported (info): `ferrolm score` of the run (the model as
trained: quantized base + adapters) against PEFT on the f32 base, i.e. the quantization's
effect; and, for q8_0 and f16, against PEFT on the base rounded in Python as ferrolm rounds
it (weights, and Q8_0's 8-bit inputs), which should come close. The fixtures are 16 wide
(Q8_0 blocks are 32, Q4_K 256: nothing is quantized, the run is plain LoRA), so besides
qwen2_tied the script makes a 256-wide random Qwen2 (the fixture's config otherwise).

SEQ_CLS (PEFT LoRA adapters + the head as `modules_to_save`):
  - `ferrolm classify train --set lora.rank=8 --set classify.train_body=full
    --set classify.ngram_buckets=0 --set classify.pooling=auto` on generated "good …" /
    "bad …" texts, on the fixtures qwen2_tied, gpt2_tied (head `score`, last token) and
    bert_tiny (head `classifier`, BERT's pooled [CLS]) and roberta_tiny (head `classifier`
    = `classifier.dense` + `classifier.out_proj` on <s>: ferrolm's pooler, trained under
    LoRA as PEFT trains that module, and its head; adapters under `roberta.…`);
    `ferrolm classify predict` gives class probabilities; PEFT on
    `AutoModelForSequenceClassification.from_pretrained(base, num_labels=2)` gives logits:
    compared as log-probabilities;
  - `ferrolm reward train --set lora.rank=8` on generated preference pairs (head `score`,
    num_labels=1). `reward train` reads a ferrolm run, not a Hugging Face folder, so the base
    is first made a run by `ferrolm sft … --set train.max_steps=0` (same weights) and exported
    back with `ferrolm export --format hf` for transformers; `ferrolm reward score` against
    PEFT's logit.
Token ids are ferrolm's (its tokenizer via `ferrolm tokenizer encode`, framed as ferrolm
frames them: a decoder's text after <|endoftext|>, BERT's as [CLS] text [SEP]; a reward
sequence is the chat template's parts encoded one by one); transformers pools them its own
way, one text at a time without a pad id and again as one right-padded batch with
`pad_token_id` = ferrolm's pad id. Each row also says how far the adapters move the output
(PEFT with the LoRA scaling set to 0, head kept), so that a match is not vacuous, and lists
any tensor of the adapter file PEFT did not load.
"""
import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib

try:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification
    from peft import PeftModel, get_peft_model_state_dict
    from peft.tuners.lora import LoraLayer
    from safetensors.torch import load_file
    from tokenizers import Tokenizer
    from transformers.utils import logging as hf_logging
except ImportError as e:  # pragma: no cover
    print(f"skipped: {e} (pip install torch transformers peft)")
    sys.exit(0)

hf_logging.set_verbosity_error()  # the load reports list the new heads as missing: checked below instead
hf_logging.disable_progress_bar()
HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "crates", "model", "tests", "fixtures", "hf")
TEXT = "The cat sat on the mat. Repeat the word dog: dog dog."


def refused(cmd, expect):
    """A command that must fail with a message containing `expect` (a refusal, not a crash)."""
    r = subprocess.run(cmd, capture_output=True, text=True)
    ok = r.returncode != 0 and expect in r.stderr
    return {"cmd": " ".join(os.path.basename(c) if os.sep in c else c for c in cmd[:3]), "refused_as_expected": ok,
            "message": r.stderr.strip().splitlines()[-1][:300] if r.stderr.strip() else ""}


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return r


def records(path, n=200):
    words = ["red", "blue", "green", "cat", "dog", "sky", "grass", "moon", "river", "bird"]
    with open(path, "w") as f:
        for i in range(n):
            w = words[i % len(words)]
            f.write(json.dumps({"instruction": f"Repeat the word {w} twice.", "input": "", "output": f"{w} {w}"}) + "\n")


def logprobs(model, ids):
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    lp = torch.log_softmax(logits, -1)
    return [lp[i, ids[i + 1]].item() for i in range(len(ids) - 1)]


def check(ferrolm, name, base_hf, work):
    data = os.path.join(work, "instr.jsonl")
    records(data)
    out = os.path.join(work, f"lora-{name}")
    r = run([ferrolm, "sft", "--model", base_hf, "--data", data, "--out", out, "--quiet",
             "--set", "lora.rank=8", "--set", "lora.alpha=16", "--set", "lora.dropout=0.05",
             "--set", "train.max_steps=40", "--set", "train.lr=0.01", "--set", "train.batch_size=8",
             "--set", "train.eval_interval=0", "--set", "sft.samples=0"])
    lora_line = next((l for l in r.stderr.splitlines() if l.startswith("LoRA")), "")
    ref = json.loads(run([ferrolm, "score", "--model", out, "--text", TEXT, "--json"]).stdout)
    ids = ref["token_ids"]
    dtype = torch.float32
    base = AutoModelForCausalLM.from_pretrained(base_hf, attn_implementation="eager", dtype=dtype).eval()
    plain = logprobs(base, ids)
    peft_dir = os.path.join(work, f"peft-{name}")
    run([ferrolm, "export", "--model", out, "--format", "peft", "--out", peft_dir])
    res = {"base": name, "lora": lora_line, "tokens": len(ids),
           "adapters_change_logprobs": max(abs(a - b) for a, b in zip(plain, ref["logprobs"]))}
    for label, adir in [("run adapter/", os.path.join(out, "adapter")), ("export --format peft", peft_dir)]:
        m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_hf, attn_implementation="eager", dtype=dtype), adir).eval()
        got = logprobs(m, ids)
        res[f"peft[{label}] max_abs_diff"] = max(abs(a - b) for a, b in zip(got, ref["logprobs"]))
    merged = os.path.join(work, f"merged-{name}")
    run([ferrolm, "export", "--model", out, "--format", "hf", "--merge-lora", "--out", merged])
    m = AutoModelForCausalLM.from_pretrained(merged, attn_implementation="eager", dtype=dtype).eval()
    res["merged export max_abs_diff"] = max(abs(a - b) for a, b in zip(logprobs(m, ids), ref["logprobs"]))
    return res

# ---- QLoRA (CAUSAL_LM on a quantized base)

# Weights a quantization can hold: rows cut into blocks of this many values (narrower
# layers stay f32, so a base whose widths are not multiples trains plain LoRA).
QUANT_BLOCK = {"q8_0": 32, "q4_k": 256, "f16": 1}


def wide_qwen2(work, width=256):
    """A random Qwen2 like the qwen2_tied fixture (same tokenizer), but `width` wide and
    2·`width` in the MLP, so that every block weight is whole Q8_0 and Q4_K blocks."""
    out = os.path.join(work, f"qwen2_w{width}")
    src = os.path.join(FIXTURES, "qwen2_tied")
    cfg = AutoConfig.from_pretrained(src)
    cfg.hidden_size, cfg.intermediate_size = width, 2 * width
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(out)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(os.path.join(src, f), out)
    return out


def round_q8_0(x):
    """Q8_0's rounding of rows (last dim a multiple of 32): per block of 32, scale amax/127."""
    b = x.reshape(-1, 32)
    amax = b.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, 127 / amax, torch.zeros_like(amax))
    return ((b * inv).round().clamp(-127, 127) * (amax / 127)).reshape(x.shape)


def emulated_quant_base(base_hf, quant):
    """The f32 base as ferrolm's QLoRA base computes, for q8_0 and f16: each block linear
    layer whose inputs are whole blocks gets its weights rounded (f16, or Q8_0 with an f32
    scale) and, for Q8_0, its inputs rounded to 8 bits too (as llama.cpp's Q8_0 products
    do); the adapters PEFT adds on top see the f32 inputs. None for q4_k (not emulated)."""
    if quant not in ("q8_0", "f16"):
        return None
    m = AutoModelForCausalLM.from_pretrained(base_hf, attn_implementation="eager", dtype=torch.float32)
    layers = [l for n, l in m.named_modules() if ".layers." in n and isinstance(l, torch.nn.Linear)]
    with torch.no_grad():
        for l in layers:
            if quant == "f16":
                l.weight.copy_(l.weight.half().float())
            elif l.in_features % QUANT_BLOCK[quant] == 0:
                l.weight.copy_(round_q8_0(l.weight))
                l.register_forward_pre_hook(lambda _, args: (round_q8_0(args[0]),))
    return m


def check_qlora(ferrolm, name, base_hf, work, quant):
    data = os.path.join(work, "instr.jsonl")
    records(data)
    out = os.path.join(work, f"qlora-{quant}-{name}")
    r = run([ferrolm, "sft", "--model", base_hf, "--data", data, "--out", out, "--quiet",
             "--set", "lora.rank=8", "--set", "lora.alpha=16", "--set", "lora.dropout=0.05", "--set", f"lora.quant={quant}",
             "--set", "train.max_steps=40", "--set", "train.lr=0.01", "--set", "train.batch_size=8",
             "--set", "train.eval_interval=0", "--set", "sft.samples=0"])
    lora_line = next((l for l in r.stderr.splitlines() if l.startswith("LoRA")), "")
    cfg = AutoConfig.from_pretrained(base_hf)
    widths = [cfg.hidden_size, cfg.intermediate_size]
    trained = json.loads(run([ferrolm, "score", "--model", out, "--text", TEXT, "--json"]).stdout)
    ids = trained["token_ids"]
    dtype = torch.float32
    plain = logprobs(AutoModelForCausalLM.from_pretrained(base_hf, attn_implementation="eager", dtype=dtype).eval(), ids)
    m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_hf, attn_implementation="eager", dtype=dtype), os.path.join(out, "adapter")).eval()
    peft_f32 = logprobs(m, ids)
    merged = os.path.join(work, f"merged-qlora-{quant}-{name}")
    run([ferrolm, "export", "--model", out, "--format", "hf", "--merge-lora", "--out", merged])
    got = logprobs(AutoModelForCausalLM.from_pretrained(merged, attn_implementation="eager", dtype=dtype).eval(), ids)
    emulated = emulated_quant_base(base_hf, quant)
    if emulated is not None:
        emulated = maxdiff(trained["logprobs"], logprobs(PeftModel.from_pretrained(emulated, os.path.join(out, "adapter")).eval(), ids))
    return {"base": name, "check": f"QLoRA sft lora.quant={quant}", "lora": lora_line, "tokens": len(ids),
            "widths (hidden, mlp)": widths, "widths_quantizable": all(w % QUANT_BLOCK[quant] == 0 for w in widths),
            "adapters_change_logprobs": maxdiff(plain, peft_f32),
            "merged export vs peft(f32 base + adapter/) max_abs_diff": maxdiff(got, peft_f32),
            "ferrolm score (quantized base + adapters) vs peft(f32 base) (info)": maxdiff(trained["logprobs"], peft_f32),
            "ferrolm score vs peft(base rounded in Python as ferrolm rounds it) (info)": emulated}


# ---- SEQ_CLS (classifier and reward-model heads)

def maxdiff(a, b):
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def labelled(path, n=200):
    nouns = ["movie", "film", "plot", "cast", "song", "book", "meal", "show", "story", "ending"]
    with open(path, "w") as f:
        for i in range(n):
            good = i % 2 == 0
            a, b = nouns[i % len(nouns)], nouns[(i * 7 + 3) % len(nouns)]
            text = f"{'good' if good else 'bad'} {a}, the {b} was {'good' if good else 'bad'}"
            f.write(json.dumps({"text": text, "label": "positive" if good else "negative"}) + "\n")


def preferences(path, n=200):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"instruction": f"say a word {i % 10}", "chosen": "good good", "rejected": "bad bad"}) + "\n")


CLS_TEXTS = ["good movie, the plot was good", "bad film", "a good song, not bad", "the ending"]
REWARD_PAIRS = [("say a word 3", "good good"), ("say a word 3", "bad bad"), ("say a word 42", "good"), ("name a colour", "bad good")]


class Ids:
    """Token ids as ferrolm makes them: its tokenizer (`ferrolm tokenizer encode`), the text
    framed as `ferrolm_finetune::prompt::bos` / `classify::encode_text` frame it."""

    def __init__(self, ferrolm, tokenizer_json):
        self.ferrolm, self.path = ferrolm, tokenizer_json
        self.hf = Tokenizer.from_file(tokenizer_json)
        bare, framed = self.hf.encode("a", add_special_tokens=False).ids, self.hf.encode("a").ids
        at = next(i for i in range(len(framed) - len(bare) + 1) if framed[i:i + len(bare)] == bare)
        self.pre, self.post = framed[:at], framed[at + len(bare):]
        eot, pad = self.hf.token_to_id("<|endoftext|>"), self.hf.token_to_id("<|pad|>")
        self.bos = self.pre or ([eot] if eot is not None else [])
        self.pad = pad if pad is not None else eot if eot is not None else 0
        self.agree = True  # ferrolm's ids of every text equal the tokenizers library's

    def encode(self, text):
        if not text:
            return []
        ids = [int(t) for t in run([self.ferrolm, "tokenizer", "encode", "--tokenizer", self.path, "--text", text]).stdout.split()]
        self.agree &= ids == self.hf.encode(text, add_special_tokens=False).ids
        return ids

    def classify(self, text, masked_lm):
        body = self.encode(text)
        return self.pre + body + self.post if masked_lm else self.bos + body

    def reward(self, tpl, prompt, response):
        parts = [tpl["user"], tpl["after_role"], prompt, tpl["end"], tpl["after_end"], tpl["assistant"], tpl["after_role"], response, tpl["end"]]
        return self.bos + [t for p in parts for t in self.encode(p)]


def seq_cls_model(base_hf, num_labels, adir, pad=None):
    m = AutoModelForSequenceClassification.from_pretrained(base_hf, num_labels=num_labels, attn_implementation="eager", dtype=torch.float32)
    if pad is not None:
        m.config.pad_token_id = pad
    m = PeftModel.from_pretrained(m, adir).eval()
    # every tensor of the adapter file, as PEFT holds it after loading
    held = get_peft_model_state_dict(m)
    missing = [k for k, v in load_file(os.path.join(adir, "adapter_model.safetensors")).items() if k not in held or not torch.equal(held[k], v)]
    return m, missing


def seq_logits(m, seqs, pad=None):
    """Logits (rows, labels): one sequence at a time, or (with `pad`) one right-padded batch."""
    with torch.no_grad():
        if pad is None:
            return torch.cat([m(input_ids=torch.tensor([s])).logits for s in seqs]).double()
        t = max(map(len, seqs))
        x = torch.tensor([s + [pad] * (t - len(s)) for s in seqs])
        mask = torch.tensor([[1] * len(s) + [0] * (t - len(s)) for s in seqs])
        return m(input_ids=x, attention_mask=mask).logits.double()


@contextlib.contextmanager
def adapters_off(m):
    """LoRA scaling 0 (the body as the base has it), the trained head kept."""
    saved = [(mod, dict(mod.scaling)) for mod in m.modules() if isinstance(mod, LoraLayer)]
    for mod, sc in saved:
        mod.scaling = {k: 0.0 for k in sc}
    try:
        yield
    finally:
        for mod, sc in saved:
            mod.scaling = sc


def compare_seq_cls(res, base_hf, num_labels, adapters, seqs, ref, pad, to_scores):
    """PEFT on each adapter folder vs ferrolm's `ref` (rows of scores); `to_scores` maps logits
    to what ferrolm printed (log-probabilities, or the reward itself)."""
    flat = lambda t: [x for row in t for x in row]
    for label, adir in adapters:
        try:
            m, missing = seq_cls_model(base_hf, num_labels, adir)
        except Exception as e:  # PEFT cannot load the file into this model class
            res["error"] = f"PeftModel.from_pretrained({label}): {type(e).__name__}: {e}"
            return
        got = to_scores(seq_logits(m, seqs))
        res[f"peft[{label}] max_abs_diff"] = maxdiff(flat(got), flat(ref))
        res[f"peft[{label}] tensors not loaded"] = missing[:4] + ([f"… {len(missing)} in all"] if len(missing) > 4 else [])
    with adapters_off(m):
        res["adapters_change (head kept)"] = maxdiff(flat(to_scores(seq_logits(m, seqs))), flat(got))
    m, _ = seq_cls_model(base_hf, num_labels, adapters[0][1], pad=pad)
    res[f"peft batched, pad_token_id={pad} max_abs_diff"] = maxdiff(flat(to_scores(seq_logits(m, seqs, pad))), flat(ref))


def check_classify(ferrolm, name, base_hf, work):
    data = os.path.join(work, "labelled.jsonl")
    labelled(data)
    out = os.path.join(work, f"cls-{name}")
    r = run([ferrolm, "classify", "train", "--model", base_hf, "--data", data, "--out", out, "--quiet",
             "--set", "lora.rank=8", "--set", "lora.alpha=16", "--set", "classify.train_body=full",
             "--set", "classify.ngram_buckets=0", "--set", "classify.pooling=auto",
             "--set", "train.max_steps=40", "--set", "train.lr=0.01", "--set", "train.batch_size=16"])
    lora_line = next((l for l in r.stderr.splitlines() if l.startswith("LoRA")), "")
    report = json.loads(r.stdout)
    with open(os.path.join(out, "classify.toml"), "rb") as f:
        labels = tomllib.load(f)["labels"]
    texts = os.path.join(work, f"texts-{name}.jsonl")
    with open(texts, "w") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in CLS_TEXTS)
    pred = [json.loads(l) for l in run([ferrolm, "classify", "predict", "--model", out, "--data", texts]).stdout.splitlines()]
    ref = [[math.log(p["probabilities"][l]) for l in labels] for p in pred]
    masked_lm = AutoConfig.from_pretrained(base_hf).model_type in ("bert", "roberta", "distilbert")
    ids = Ids(ferrolm, os.path.join(out, "tokenizer.json"))
    seqs = [ids.classify(t, masked_lm) for t in CLS_TEXTS]
    peft_dir = os.path.join(work, f"peft-cls-{name}")
    run([ferrolm, "export", "--model", out, "--format", "peft", "--out", peft_dir])
    with open(os.path.join(out, "adapter", "adapter_config.json")) as f:
        pc = json.load(f)
    res = {"base": name, "check": f"SEQ_CLS classify train (head {pc['modules_to_save']}, {len(labels)} labels)", "lora": lora_line,
           "val_accuracy": report["accuracy"], "texts": len(seqs), "first_ids": seqs[0],
           "ferrolm ids == tokenizers' ids": ids.agree, "compared": "log-probabilities"}
    compare_seq_cls(res, base_hf, len(labels), [("run adapter/", os.path.join(out, "adapter")), ("export --format peft", peft_dir)],
                    seqs, ref, ids.pad, lambda lg: torch.log_softmax(lg, -1).tolist())
    return res


def check_reward(ferrolm, name, base_hf, work):
    # `reward train` starts from a ferrolm run: make one with the base's weights (0 steps)
    data = os.path.join(work, "instr.jsonl")
    records(data)
    start = os.path.join(work, f"run0-{name}")
    run([ferrolm, "sft", "--model", base_hf, "--data", data, "--out", start, "--quiet",
         "--set", "train.max_steps=0", "--set", "train.eval_interval=0", "--set", "sft.samples=0"])
    start_hf = os.path.join(work, f"run0-{name}-hf")
    run([ferrolm, "export", "--model", start, "--format", "hf", "--out", start_hf])
    prefs = os.path.join(work, "prefs.jsonl")
    preferences(prefs)
    out = os.path.join(work, f"reward-{name}")
    r = run([ferrolm, "reward", "train", "--model", start, "--data", prefs, "--out", out, "--quiet",
             "--set", "lora.rank=8", "--set", "lora.alpha=16", "--set", "train.max_steps=40",
             "--set", "train.lr=0.01", "--set", "train.eval_interval=0"])
    lora_line = next((l for l in r.stderr.splitlines() if l.startswith("LoRA")), "")
    ref = [[float(run([ferrolm, "reward", "score", "--model", out, "--prompt", p, "--response", a]).stdout)] for p, a in REWARD_PAIRS]
    with open(os.path.join(out, "chat_template.json")) as f:
        tpl = json.load(f)
    ids = Ids(ferrolm, os.path.join(out, "tokenizer.json"))
    seqs = [ids.reward(tpl, p, a) for p, a in REWARD_PAIRS]
    peft_dir = os.path.join(work, f"peft-reward-{name}")
    run([ferrolm, "export", "--model", out, "--format", "peft", "--out", peft_dir])
    res = {"base": name, "check": "SEQ_CLS reward train (head score, 1 label)", "lora": lora_line,
           "rewards": [round(x[0], 4) for x in ref], "first_ids": seqs[0],
           "ferrolm ids == tokenizers' ids": ids.agree, "compared": "rewards"}
    compare_seq_cls(res, start_hf, 1, [("run adapter/", os.path.join(out, "adapter")), ("export --format peft", peft_dir)],
                    seqs, ref, ids.pad, lambda lg: lg.tolist())
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ferrolm", default=os.path.join(HERE, "..", "target", "release", "ferrolm"))
    ap.add_argument("--base", help="a ferrolm run folder (modern blocks) to use as a third base")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        bases = [("gpt2_tied", os.path.join(FIXTURES, "gpt2_tied")), ("qwen2_tied", os.path.join(FIXTURES, "qwen2_tied"))]
        if a.base:
            hf = os.path.join(work, "base-hf")
            run([a.ferrolm, "export", "--model", a.base, "--format", "hf", "--out", hf])
            bases.append((os.path.basename(a.base.rstrip("/")), hf))
        fixture = lambda n: os.path.join(FIXTURES, n)
        wide = wide_qwen2(work)
        checks = [lambda name=name, path=path: check(a.ferrolm, name, path, work) for name, path in bases]
        checks += [lambda q=q, name=name, path=path: check_qlora(a.ferrolm, name, path, work, q)
                   for q, name, path in [("q8_0", "qwen2_w256", wide), ("q4_k", "qwen2_w256", wide), ("f16", "qwen2_w256", wide)]]
        # qwen2_tied is 16 wide: no row fills a Q8_0 block, so lora.quant must be refused
        # (it once trained plain LoRA silently)
        records(os.path.join(work, "instr.jsonl"))
        checks.append(lambda: {"base": "qwen2_tied", "qlora": "q8_0", **refused(
            [a.ferrolm, "sft", "--model", fixture("qwen2_tied"), "--data", os.path.join(work, "instr.jsonl"), "--out", os.path.join(work, "qlora-narrow"),
             "--quiet", "--set", "lora.rank=8", "--set", "lora.quant=q8_0", "--set", "train.max_steps=2"], "no layer of this model can be held q8_0")})
        checks += [lambda name=name: check_classify(a.ferrolm, name, fixture(name), work)
                   for name in ["qwen2_tied", "gpt2_tied", "bert_tiny", "roberta_tiny"]]
        checks.append(lambda: check_reward(a.ferrolm, "qwen2_tied", fixture("qwen2_tied"), work))
        for c in checks:
            rows.append(c())
            print(json.dumps(rows[-1]), flush=True)
    ok = (all(v < 1e-4 for r in rows for k, v in r.items() if k.endswith("max_abs_diff")) and not any("error" in r for r in rows)
          and all(r["refused_as_expected"] for r in rows if "refused_as_expected" in r))
    print("all within 1e-4" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
