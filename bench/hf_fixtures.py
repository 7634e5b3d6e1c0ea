#!/usr/bin/env python3
"""Tiny random Hugging Face checkpoints and transformers' reference outputs, for ferrolm's
parity test (crates/model/tests/hf_parity.rs), which runs in CI with no Python.

Usage (a venv outside the repo):
    python3 -m venv /work/venv-hf && /work/venv-hf/bin/pip install torch transformers
    /work/venv-hf/bin/python bench/hf_fixtures.py            # (re)write the fixtures
    /work/venv-hf/bin/python bench/hf_fixtures.py --check-export DIR REF.json [TEXT]
        # load a folder written by `ferrolm export --format hf` with transformers and
        # compare its log-probs with ferrolm's (REF.json from `ferrolm score --json`);
        # with TEXT (the scored text) also the tokenizer's ids and the chat template
    /work/venv-spm/bin/python bench/hf_fixtures.py --compare-tokenizers SRC EXPORT
        # transformers' AutoTokenizer on a ferrolm export (`export --format hf` of SRC) vs on
        # SRC: ids of the SentencePiece fixture's texts and apply_chat_template's ids of its
        # conversations (tokenize=True, add_generation_prompt=True)

Each fixture folder holds what `save_pretrained` writes (config.json, safetensors, and for
some a tokenizer.json / tokenizer_config.json with a chat template) plus reference.json:
the input ids, the log-prob of each token after the first given its prefix, and the greedy
continuation of a prompt, all computed by transformers in float32 with eager attention.
Weights are drawn wider than the usual init (std 0.5, norm gains around 1, non-zero biases)
so the distributions are peaked and a wrong detail shows up in the numbers.

llama2_spm is a Llama 2-shaped LlamaForCausalLM (untied, rope_theta 10000, no scaling) whose
tokenizer is a SentencePiece BPE as Llama 2, Mistral v0.1, TinyLlama and CodeLlama have it:
a `sentencepiece` model trained here with Llama 2's trainer options (byte_fallback, digits
split, identity normalization, extra whitespace kept) on generated text, converted into the
tokenizer.json that transformers' LlamaConverter writes (legacy form: normalizer
Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer; decoder Replace, ByteFallback, Fuse,
Strip; `<s>` template), plus tokenizer_metaspace.json (the newer form: Metaspace
pre-tokenizer, prepend_scheme "first") and Llama 2 chat's tokenizer_config.json. Its
reference.json holds, per tricky text, the ids of the `tokenizers` library on each file
(what transformers 4 and TGI/vLLM give), of transformers 5's AutoTokenizer (which rebuilds a
Llama tokenizer as the Metaspace form whatever the file says) and of sentencepiece itself,
the decoded text, the SentencePiece piece scores, and the chat template's renderings.

bert_tiny is a BertForMaskedLM (post-norm blocks, erf GELU, token-type embeddings) saved
with pooler weights added, as checkpoints on the Hub carry them, and a WordPiece
tokenizer.json built here (BertTokenizer's normalizer, pre-tokenizer and [CLS]/[SEP]
template); its reference.json holds transformers' token ids (and token types) of a few
texts, and reference.safetensors the MLM logits, last hidden states, pooled outputs and
attention-mask-weighted mean of the hidden states, all float32.

    /work/venv-hf/bin/python bench/hf_fixtures.py --only bert_tiny   # one fixture
"""
import argparse
import json
import os
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "model", "tests", "fixtures", "hf")

COMMON_LLAMA = dict(hidden_size=16, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6)


def fixtures():
    """(name, config, tokenizer?, shard size) per fixture."""
    return [
        ("llama3_untied", transformers.LlamaConfig(
            vocab_size=64, **COMMON_LLAMA, tie_word_embeddings=False,
            rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 16}), False, None),
        ("mistral_sharded", transformers.MistralConfig(
            vocab_size=64, **COMMON_LLAMA, tie_word_embeddings=False, sliding_window=4096, rope_theta=10000.0), False, "8KB"),
        ("qwen2_tied", transformers.Qwen2Config(
            vocab_size=300, **COMMON_LLAMA, tie_word_embeddings=True, rope_theta=1000000.0), True, None),
        ("qwen3_untied", transformers.Qwen3Config(
            vocab_size=64, **dict(COMMON_LLAMA, head_dim=8), tie_word_embeddings=False, rope_theta=1000000.0), False, None),
        ("gpt2_tied", transformers.GPT2Config(
            vocab_size=300, n_embd=16, n_layer=2, n_head=4, n_positions=64, n_inner=None,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0), True, None),
        ("llama2_spm", transformers.LlamaConfig(
            vocab_size=SPM_VOCAB, **COMMON_LLAMA, tie_word_embeddings=False, rope_theta=10000.0,
            bos_token_id=1, eos_token_id=2), "spm", None),
    ]


def randomize(model, seed, norms=("norm", "ln_"), scale=0.5):
    """Random weights, drawn in parameter-name order: norm weights (parameters whose name has
    one of `norms`) near 1, biases small, every other matrix N(0, scale²)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if any(n in name for n in norms):
                if name.endswith("weight"):
                    p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(scale * torch.randn(p.shape, generator=g))


def chat_tokenizer(path):
    """A byte-level BPE of 300 ids (Qwen-style specials) trained on a few sentences, with a
    ChatML template in tokenizer_config.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    text = ["The quick brown fox jumps over the lazy dog.", "Hello, world! How are you today?", "the theory of the thing"] * 20
    tok.train_from_iterator(text, trainer)
    tok.save(os.path.join(path, "tokenizer.json"))
    template = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
                "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
           "bos_token": None, "chat_template": template, "model_max_length": 64}
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return tok


SPM_VOCAB = 420

# Llama 2 chat's template, as its tokenizer_config.json has it.
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")

# Texts whose ids the SentencePiece fixture pins: spaces at the ends and doubled, newlines,
# tabs, characters outside the vocabulary (byte tokens), emoji, CJK, special-token text.
SPM_TEXTS = [
    "Hello world", "the quick brown fox jumps over the lazy dog.", " leading space", "trailing space ",
    "double  space", "   three leading", "line one\nline two\n\nafter a blank", "\n starts with a newline",
    "tabs\tand\ttabs", "café naïve", "Ünïcödé ßtraße", "日本語 text", "中文字符", "emoji 🦀🎉 ok", "🦀",
    "<s>Hello</s> world", "text with <s> inside", "[INST] hi [/INST]", "digits 12345 and 3.14",
    "def main():\n    print('hi')", "a\u00a0non-breaking space", "nul\x00byte", "\r\nwindows lines", "", " ",
]


def spm_training_text():
    """A few hundred generated lines over a small word list, with the digits, tabs, code and
    accented/CJK characters the fixture's texts use (some CJK left out on purpose)."""
    import random
    rng = random.Random(0)
    words = ("the quick brown fox jumps over lazy dog hello world how are you today theory of thing fine "
             "naive resume cafe culture quickly quicker quickest").split()
    lines = []
    for _ in range(400):
        n = rng.randint(3, 12)
        lines.append(" ".join(rng.choice(words) for _ in range(n)) + rng.choice([".", "!", "?", ",", ""]))
    lines += ["日本語 text", "café naïve"] * 3
    lines += ["Numbers 0 1 2 3 4 5 6 7 8 9 and 42, 2024.", "  indented  text\twith\ttabs", "def main():\n    print('hi')"] * 5
    return lines


def sentencepiece_tokenizer(path):
    """Train a SentencePiece BPE with Llama 2's options and write what a Llama 2 repo holds:
    tokenizer.json as transformers' LlamaConverter writes it (legacy form), Llama 2 chat's
    tokenizer_config.json; also tokenizer_metaspace.json, the newer form. Returns the
    SentencePieceProcessor and both `tokenizers` objects.

    transformers 5's LlamaConverter no longer runs on a bare .model file, so the conversion
    is spelled out here, step for step what transformers 4's LlamaConverter did: vocab in
    SentencePiece's order, merges from generate_merges ranked by piece score, BPE with
    fuse_unk and byte_fallback, <unk>/<s>/</s> as special added tokens."""
    import io
    import sentencepiece as spm
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers.tokenization_utils_base import generate_merges
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(spm_training_text()), model_writer=model, model_type="bpe", vocab_size=SPM_VOCAB,
        byte_fallback=True, character_coverage=1.0, split_digits=True, allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    assert sp.get_piece_size() == SPM_VOCAB, sp.get_piece_size()
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    vocab = {p: i for i, p in enumerate(pieces)}
    scores = {p: sp.get_score(i) for i, p in enumerate(pieces)}

    def build(legacy):
        tok = Tokenizer(BPE(vocab, generate_merges(vocab, scores), unk_token="<unk>", fuse_unk=True, byte_fallback=True, dropout=None))
        tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in pieces[:3]])
        if legacy:
            tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        else:
            tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
        tok.post_processor = processors.TemplateProcessing(
            single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", 1)])
        return tok
    legacy, metaspace = build(True), build(False)
    legacy.save(os.path.join(path, "tokenizer.json"))
    metaspace.save(os.path.join(path, "tokenizer_metaspace.json"))
    cfg = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
           "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None, "legacy": False,
           "clean_up_tokenization_spaces": False, "chat_template": LLAMA2_CHAT_TEMPLATE, "model_max_length": 64}
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)
    return sp, legacy, metaspace


def spm_reference(path, sp, legacy, metaspace):
    """The SentencePiece fixture's tokenizer references (see the module doc)."""
    from transformers import AutoTokenizer
    at = AutoTokenizer.from_pretrained(path)
    texts = []
    for text in SPM_TEXTS:
        ids = legacy.encode(text, add_special_tokens=False).ids
        texts.append({
            "text": text, "ids": ids, "framed": legacy.encode(text).ids,
            "metaspace_ids": metaspace.encode(text, add_special_tokens=False).ids,
            "transformers_ids": at(text, add_special_tokens=False).input_ids,
            "sentencepiece_ids": sp.encode(text),
            "pieces": [legacy.id_to_token(i) for i in ids],
            "decoded": legacy.decode(ids, skip_special_tokens=False),
            "decoded_framed": legacy.decode(legacy.encode(text).ids, skip_special_tokens=False),
        })
    # decodes of id lists no text encodes to: a leading byte-token space, a space token alone,
    # special tokens between pieces
    space = legacy.token_to_id("▁")
    odd = [[legacy.token_to_id("<0x20>")] + legacy.encode("hi", add_special_tokens=False).ids, [space], [space, space],
           [1] + legacy.encode("hi", add_special_tokens=False).ids + [2] + legacy.encode(" there", add_special_tokens=False).ids]
    decodes = [{"ids": ids, "decoded": legacy.decode(ids, skip_special_tokens=False), "transformers": at.decode(ids)} for ids in odd]
    sys_user = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi! "}]
    convo = sys_user + [{"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye?"}]
    chats = []
    for msgs in [sys_user, convo, convo[1:]]:
        rendered = at.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        chats.append({"messages": msgs, "rendered": rendered, "ids": legacy.encode(rendered, add_special_tokens=False).ids,
                      "transformers_ids": at.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True, return_dict=False)})
    try:
        at.apply_chat_template([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], tokenize=False)
        raise AssertionError("the Llama 2 template accepted two user turns in a row")
    except Exception as e:  # jinja2's TemplateError with the template's message
        bad_order = str(e)
    return {"tokenizer_class": type(at).__name__, "texts": texts, "decodes": decodes,
            "scores": [sp.get_score(i) for i in range(sp.get_piece_size())],
            "byte_ids": [sp.is_byte(i) for i in range(sp.get_piece_size())].count(True),
            "chat": chats, "chat_bad_order_error": bad_order}


@torch.no_grad()
def logprobs(model, ids):
    logits = model(torch.tensor([ids])).logits[0].double()
    lp = torch.log_softmax(logits, dim=-1)
    return [lp[i, ids[i + 1]].item() for i in range(len(ids) - 1)]


@torch.no_grad()
def greedy(model, prompt, n):
    # No stop token, and an explicit attention mask (otherwise generate masks prompt
    # tokens equal to pad_token_id).
    p = torch.tensor([prompt])
    out = model.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=n, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def write_fixtures(only=None):
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    if only is None or "bert_tiny" in only:
        write_bert_fixture()
    if only is None or "distilbert_tiny" in only:
        write_distilbert_fixture()
    if only is None or "roberta_tiny" in only:
        write_roberta_fixture()
    for seed, (name, cfg, with_tok, shard) in enumerate(fixtures()):
        if only is not None and name not in only:
            continue
        path = os.path.join(OUT, name)
        os.makedirs(path, exist_ok=True)
        for f in os.listdir(path):
            os.remove(os.path.join(path, f))
        cfg._attn_implementation = "eager"
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float().eval()
        randomize(model, 1000 + seed)
        kwargs = {"max_shard_size": shard} if shard else {}
        model.save_pretrained(path, **kwargs)
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, cfg.vocab_size, (20,), generator=gen).tolist()
        ref = {"transformers": transformers.__version__, "torch": torch.__version__, "input_ids": ids,
               "logprobs": logprobs(model, ids), "prompt": ids[:5], "greedy": greedy(model, ids[:5], 12)}
        if with_tok == "spm":
            sp, legacy, metaspace = sentencepiece_tokenizer(path)
            text = "Hello, the quick fox! 日本 🦀 <s> and\ttabs"
            tids = legacy.encode(text).ids
            ref["text"] = text
            ref["text_ids"] = tids
            ref["text_logprobs"] = logprobs(model, tids)
            ref["spm"] = spm_reference(path, sp, legacy, metaspace)
        elif with_tok:
            tok = chat_tokenizer(path)
            text = "Hello, the quick fox!"
            tids = tok.encode(text).ids
            ref["text"] = text
            ref["text_ids"] = tids
            ref["text_logprobs"] = logprobs(model, tids)
            if name.startswith("gpt2"):
                os.remove(os.path.join(path, "tokenizer_config.json"))
            else:
                from transformers import AutoTokenizer
                at = AutoTokenizer.from_pretrained(path)
                msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
                ref["chat"] = {"messages": msgs, "rendered": at.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)}
        with open(os.path.join(path, "reference.json"), "w") as f:
            json.dump(ref, f, indent=1, ensure_ascii=with_tok != "spm")
        size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
        print(f"{name}: {size // 1024} KiB, files {sorted(os.listdir(path))}")


BERT_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! The [MASK] is quick.",
    "Unaffable CAFÉ, naïve résumé? 42 ☃",
    "Foxes jumped over lazier thinking dogs",
]
BERT_PAIR = ("How are you today?", "The lazy dog is fine.")


def wordpiece_vocab():
    """A WordPiece vocabulary of about 150 entries (BERT's five specials first) trained on a
    few sentences with BERT's normalizer and pre-tokenizer."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=150, special_tokens=specials, show_progress=False)
    text = ["The quick brown fox jumps over the lazy dog.", "Hello, world! How are you today?",
            "the theory of the thing is fine", "a naive resume of cafe culture", "quickly, quicker, quickest"] * 20
    tok.train_from_iterator(text, trainer)
    vocab = tok.get_vocab()
    return dict(sorted(vocab.items(), key=lambda kv: kv[1]))


def randomize_bert(model, seed):
    randomize(model, seed, norms=("LayerNorm",), scale=0.3)


def per_text_reference(tok, mlm, base, texts, ref, out, tokens=True, pooled=True):
    """Each text's ids (and tokens) into ref["texts"]; its MLM logits, last hidden states
    and (pooled) pooler output into out, keyed by the text's index."""
    for i, text in enumerate(texts):
        enc = tok(text, return_tensors="pt")
        entry = {"text": text, "input_ids": enc.input_ids[0].tolist()}
        if tokens:
            entry["tokens"] = tok.convert_ids_to_tokens(enc.input_ids[0].tolist())
        ref["texts"].append(entry)
        out[f"logits.{i}"] = mlm(**enc).logits[0].float().contiguous()
        o = base(**enc)
        out[f"hidden.{i}"] = o.last_hidden_state[0].contiguous()
        if pooled:
            out[f"pooled.{i}"] = o.pooler_output[0].contiguous()


def mean_pooled_reference(tok, base, texts, out):
    """A padded batch of all texts: the mean of the last hidden states over the attention
    mask (sentence-transformers' mean pooling; the frame's special tokens included) into
    out["mean_pooled"]; returns the batch's encoding."""
    enc = tok(texts, padding=True, return_tensors="pt")
    h = base(**enc).last_hidden_state
    m = enc.attention_mask.unsqueeze(-1).float()
    out["mean_pooled"] = ((h * m).sum(1) / m.sum(1)).contiguous()
    return enc


def save_reference(path, name, ref, out):
    from safetensors.torch import save_file
    save_file(out, os.path.join(path, "reference.safetensors"))
    with open(os.path.join(path, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1, ensure_ascii=False)
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    print(f"{name}: {size // 1024} KiB, files {sorted(os.listdir(path))}")


@torch.no_grad()
def write_bert_fixture():
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertModel, BertTokenizer
    name = "bert_tiny"
    path = os.path.join(OUT, name)
    os.makedirs(path, exist_ok=True)
    for f in os.listdir(path):
        os.remove(os.path.join(path, f))
    tok = BertTokenizer(vocab=wordpiece_vocab())
    tok.save_pretrained(path)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, type_vocab_size=2, hidden_act="gelu",
                     layer_norm_eps=1e-12, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0)
    cfg._attn_implementation = "eager"
    mlm = BertForMaskedLM(cfg).float().eval()
    randomize_bert(mlm, 2000)
    mlm.save_pretrained(path)
    # transformers saves BertForMaskedLM without a pooler; checkpoints on the Hub (saved from
    # pre-training) carry one: add random pooler weights the way they are stored.
    g = torch.Generator().manual_seed(2001)
    weights = os.path.join(path, "model.safetensors")
    tensors = load_file(weights)
    tensors["bert.pooler.dense.weight"] = 0.3 * torch.randn((32, 32), generator=g)
    tensors["bert.pooler.dense.bias"] = 0.2 * torch.randn((32,), generator=g)
    save_file(tensors, weights, metadata={"format": "pt"})
    # Everything below is computed from the saved folder, as a user would load it.
    tok = AutoTokenizer.from_pretrained(path)
    mlm = BertForMaskedLM.from_pretrained(path, attn_implementation="eager", dtype=torch.float32).eval()
    base = BertModel.from_pretrained(path, attn_implementation="eager", dtype=torch.float32).eval()
    assert base.pooler is not None
    assert torch.equal(base.pooler.dense.bias, tensors["bert.pooler.dense.bias"])
    ref = {"transformers": transformers.__version__, "torch": torch.__version__, "tokenizer_class": type(tok).__name__,
           "texts": [], "pair": None}
    out = {}
    per_text_reference(tok, mlm, base, BERT_TEXTS, ref, out)
    # the pair: second segment with token type 1
    enc = tok(*BERT_PAIR, return_tensors="pt")
    ref["pair"] = {"texts": list(BERT_PAIR), "input_ids": enc.input_ids[0].tolist(), "token_type_ids": enc.token_type_ids[0].tolist()}
    out["logits.pair"] = mlm(**enc).logits[0].contiguous()
    out["pooled.pair"] = base(**enc).pooler_output[0].contiguous()
    enc = mean_pooled_reference(tok, base, BERT_TEXTS, out)
    out["pooled_batch"] = base(**enc).pooler_output.contiguous()
    save_reference(path, name, ref, out)


@torch.no_grad()
def write_distilbert_fixture():
    """distilbert_tiny: a DistilBertForMaskedLM (BERT's post-norm blocks under other names,
    no token types, no pooler; its MLM head vocab_transform/vocab_layer_norm/vocab_projector)
    with bert_tiny's WordPiece vocabulary (copied, so both fixtures share one vocabulary)."""
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForMaskedLM, DistilBertModel
    name = "distilbert_tiny"
    path = os.path.join(OUT, name)
    os.makedirs(path, exist_ok=True)
    for f in os.listdir(path):
        os.remove(os.path.join(path, f))
    bert_tok = AutoTokenizer.from_pretrained(os.path.join(OUT, "bert_tiny"))
    cfg = DistilBertConfig(vocab_size=len(bert_tok), dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64,
                           activation="gelu", dropout=0.0, attention_dropout=0.0, qa_dropout=0.0, seq_classif_dropout=0.0,
                           sinusoidal_pos_embds=False, pad_token_id=0)
    cfg._attn_implementation = "eager"
    mlm = DistilBertForMaskedLM(cfg).float().eval()
    randomize(mlm, 2100, norms=("layer_norm", "LayerNorm"), scale=0.3)
    mlm.save_pretrained(path)
    bert_tok.save_pretrained(path)
    with open(os.path.join(path, "tokenizer_config.json")) as f:
        tc = json.load(f)
    tc["tokenizer_class"] = "DistilBertTokenizer"
    tc["model_input_names"] = ["input_ids", "attention_mask"]
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(tc, f, indent=1)
    # Everything below is computed from the saved folder, as a user would load it.
    tok = AutoTokenizer.from_pretrained(path)
    mlm = DistilBertForMaskedLM.from_pretrained(path, attn_implementation="eager", dtype=torch.float32).eval()
    base = DistilBertModel.from_pretrained(path, attn_implementation="eager", dtype=torch.float32).eval()
    ref = {"transformers": transformers.__version__, "torch": torch.__version__, "tokenizer_class": type(tok).__name__, "texts": []}
    out = {}
    assert "token_type_ids" not in tok(BERT_TEXTS[0])
    per_text_reference(tok, mlm, base, BERT_TEXTS, ref, out, tokens=False, pooled=False)
    mean_pooled_reference(tok, base, BERT_TEXTS, out)
    save_reference(path, name, ref, out)


@torch.no_grad()
def write_roberta_fixture():
    """roberta_tiny: a RobertaForMaskedLM (BERT's blocks; positions offset by pad_token_id + 1,
    one token type, the MLM head lm_head.{dense,layer_norm,decoder,bias}) with a byte-level
    BPE tokenizer framed by RobertaProcessing (<s> … </s>) and a <mask> token, as roberta-base's."""
    from safetensors.torch import load_file, save_file
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoTokenizer, RobertaConfig, RobertaForMaskedLM, RobertaModel, RobertaTokenizerFast
    name = "roberta_tiny"
    path = os.path.join(OUT, name)
    os.makedirs(path, exist_ok=True)
    for f in os.listdir(path):
        os.remove(os.path.join(path, f))
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    text = ["The quick brown fox jumps over the lazy dog.", "Hello, world! How are you today?",
            "the theory of the thing is fine", "a naive resume of cafe culture", "quickly, quicker, quickest"] * 20
    bpe.train_from_iterator(text, trainer)
    bpe.post_processor = processors.RobertaProcessing(("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>")))
    tok = RobertaTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
                               unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
    tok.save_pretrained(path)
    cfg = RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        max_position_embeddings=66, type_vocab_size=1, hidden_act="gelu", layer_norm_eps=1e-5,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    cfg._attn_implementation = "eager"
    mlm = RobertaForMaskedLM(cfg).float().eval()
    randomize(mlm, 2200, norms=("LayerNorm", "layer_norm"), scale=0.3)
    mlm.save_pretrained(path)
    # checkpoints on the Hub carry a pooler (RobertaForMaskedLM saves none): add one
    g = torch.Generator().manual_seed(2201)
    weights = os.path.join(path, "model.safetensors")
    tensors = load_file(weights)
    tensors["roberta.pooler.dense.weight"] = 0.3 * torch.randn((32, 32), generator=g)
    tensors["roberta.pooler.dense.bias"] = 0.2 * torch.randn((32,), generator=g)
    save_file(tensors, weights, metadata={"format": "pt"})
    # Everything below is computed from the saved folder, as a user would load it.
    tok = AutoTokenizer.from_pretrained(path)
    mlm = RobertaForMaskedLM.from_pretrained(path, attn_implementation="eager", dtype=torch.float32).eval()
    base = RobertaModel.from_pretrained(path, attn_implementation="eager", dtype=torch.float32).eval()
    assert base.pooler is not None
    ref = {"transformers": transformers.__version__, "torch": torch.__version__, "tokenizer_class": type(tok).__name__, "texts": []}
    out = {}
    texts = [t.replace("[MASK]", "<mask>") for t in BERT_TEXTS]
    per_text_reference(tok, mlm, base, texts, ref, out)
    mean_pooled_reference(tok, base, texts, out)
    save_reference(path, name, ref, out)


def check_export(folder, ref_path, text=None):
    """transformers' log-probs on a ferrolm export vs ferrolm's own (score --json); with the
    scored text, also transformers' tokenization of it and the chat template's rendering."""
    from transformers import AutoTokenizer
    with open(ref_path) as f:
        ref = json.load(f)
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32).eval()
    got = logprobs(model, ref["token_ids"])
    diff = max(abs(a - b) for a, b in zip(got, ref["logprobs"]))
    out = {"folder": folder, "model_type": model.config.model_type, "tokens": len(ref["token_ids"]), "max_abs_diff": diff}
    ok = diff < 1e-4
    if text is not None:
        tok = AutoTokenizer.from_pretrained(folder)
        out["same_token_ids"] = tok(text).input_ids == ref["token_ids"]
        out["chat"] = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
        ok = ok and out["same_token_ids"]
    print(json.dumps(out))
    return ok


def compare_tokenizers(src, export):
    """AutoTokenizer on `export` gives the ids AutoTokenizer on `src` gives (texts with the
    tokenizer's own framing, and chat prompts)."""
    from transformers import AutoTokenizer
    a, b = AutoTokenizer.from_pretrained(src), AutoTokenizer.from_pretrained(export)
    texts = [t for t in SPM_TEXTS if a(t).input_ids == b(t).input_ids]
    sys_user = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi! "}]
    convo = sys_user + [{"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye?"}]
    chat = lambda t, m: t.apply_chat_template(m, tokenize=True, add_generation_prompt=True, return_dict=False)
    chats = [m for m in (sys_user, convo, convo[1:]) if chat(a, m) == chat(b, m)]
    out = {"transformers": transformers.__version__, "classes": [type(a).__name__, type(b).__name__],
           "texts_same_ids": f"{len(texts)}/{len(SPM_TEXTS)}", "chats_same_ids": f"{len(chats)}/3",
           "first_text_ids": b(SPM_TEXTS[0]).input_ids}
    print(json.dumps(out, ensure_ascii=False))
    return len(texts) == len(SPM_TEXTS) and len(chats) == 3


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-export", nargs="+", metavar="DIR REF_JSON [TEXT]")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="write only these fixtures (e.g. bert_tiny)")
    ap.add_argument("--compare-tokenizers", nargs=2, metavar=("SRC", "EXPORT"))
    a = ap.parse_args()
    if a.compare_tokenizers:
        sys.exit(0 if compare_tokenizers(*a.compare_tokenizers) else 1)
    if a.check_export:
        sys.exit(0 if check_export(*a.check_export) else 1)
    write_fixtures(a.only)
