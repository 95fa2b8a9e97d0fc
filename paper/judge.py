"""
Generative perplexity as the paper measures it: samples scored by another language model, the
judge (GPT-2 Large in the paper), with the authors' counting rules.

The rules, from the authors' metrics.py (Metrics._eval_retokenize and
record_generative_perplexity) and main.py (_generate_samples), s-sahoo/Eso-LMs at 92e7982:
  1. Decode each sample to text (its end-of-text tokens kept, as "<|endoftext|>").
  2. Re-tokenise each batch of samples (the sampler's batch: 256 in the paper) with the judge's
     tokenizer at once: truncated to max_length (the model's length, 1024), padded to the
     longest sample of the batch with the EOS token (the judge's pad token when it has none),
     with an attention mask.
  3. Score the batch in pieces of 8 samples (eval.perplexity_batch_size; a remainder of fewer
     than 8 is dropped, as theirs) and in chunks of 1,024 positions (the judge's context): the
     judge's float32 cross-entropy of position i + 1 from positions <= i; position 0 is never
     scored.
  4. The tokens that count: every token that is not EOS, and the first EOS of each sample
     (a sample without one counts its first padding EOS, the end of its text, when the batch
     pads it).
  5. Pool over all samples: gen PPL = exp(sum of counted NLLs / number of counted tokens).
Entropy (record_entropy): each sample's unigram entropy over its token ids (natural log),
averaged over samples.
"""

import math
import os

import torch
import torch.nn.functional as F

import cli

SCORE_BATCH = 8  # the authors' eval.perplexity_batch_size
JUDGE_CONTEXT = 1024  # their eval_context_size for GPT-2 judges


class JudgeError(cli.UserError):
    """A judge that cannot be loaded: one line, exit status 2."""


def load(name_or_folder, device="cpu"):
    """(model, tokenizer) of a Hugging Face causal LM: a hub name (gpt2-large, downloaded once
    into the Hugging Face cache) or a local folder."""
    try:
        import transformers
    except ImportError:
        raise JudgeError(
            "--judge needs the transformers package (pip install transformers); or score with "
            "--ar_judge, an alpha_0 = 0 model of ours"
        ) from None
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(name_or_folder)
        model = transformers.AutoModelForCausalLM.from_pretrained(name_or_folder)
    except Exception as e:  # offline, a missing folder, a model that is not causal
        raise JudgeError(
            f"could not load the judge {name_or_folder!r} ({type(e).__name__}; offline?): give "
            "a local folder of a Hugging Face causal LM (e.g. gpt2-large saved with "
            "save_pretrained)"
        ) from None
    if tokenizer.pad_token is None:  # as the authors: pad with EOS
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer


@torch.no_grad()
def score_batch(model, tokenizer, texts, max_length):
    """(sum of counted NLLs, number of counted tokens) of one sampler batch of texts, by the
    rules of the module's docstring (steps 2 to 4)."""
    device = next(model.parameters()).device
    encoded = tokenizer(
        texts,
        return_tensors="pt",
        return_token_type_ids=False,
        return_attention_mask=True,
        truncation=True,
        padding=True,
        max_length=max_length,
    )
    ids = encoded["input_ids"].to(device)
    attention = encoded["attention_mask"].to(device)
    eos = tokenizer.eos_token_id
    batch = min(SCORE_BATCH, ids.size(0))
    nll_sum = 0.0
    count = 0.0
    for i in range(ids.size(0) // batch):
        rows = slice(i * batch, (i + 1) * batch)
        pieces = zip(ids[rows].split(JUDGE_CONTEXT, -1), attention[rows].split(JUDGE_CONTEXT, -1))
        for chunk, chunk_attention in pieces:
            logits = model(chunk, attention_mask=chunk_attention).logits  # (b, n, V)
            nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), chunk[:, 1:], reduction="none")
            counted = counted_tokens(chunk, eos)[:, 1:]
            nll_sum += float((nll * counted).double().sum())
            count += float(counted.sum())
    return nll_sum, count


def counted_tokens(ids, eos):
    """(b, n) bool: the tokens that count, every non-EOS token and the first EOS of a row."""
    first_eos = (ids == eos).cumsum(-1) == 1
    not_eos = ids != eos
    return first_eos | not_eos


def gen_ppl(model, tokenizer, batches, max_length=1024):
    """The pooled generative perplexity of batches of texts (a list of lists: the sampler's
    batches), and its parts: {"gen_ppl", "judge_nll" (per counted token), "counted"}."""
    nll_sum = 0.0
    count = 0.0
    for texts in batches:
        batch_sum, batch_count = score_batch(model, tokenizer, texts, max_length)
        nll_sum += batch_sum
        count += batch_count
    nll = nll_sum / max(count, 1)
    return {"gen_ppl": math.exp(min(nll, 700)), "judge_nll": nll, "counted": int(count)}


def unigram_entropy(rows):
    """The mean over rows (lists or 1-D tensors of token ids) of each row's unigram entropy, in
    nats."""
    total = 0.0
    for row in rows:
        counts = torch.as_tensor(row).unique(return_counts=True)[1]
        total += torch.special.entr(counts.float() / counts.sum()).sum().item()
    return total / max(len(rows), 1)
