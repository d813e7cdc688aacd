"""Code tasks on held-out standard-library text, as circuit tasks: the items are the zoo's (``interp.zoo.tasks``,
which also measures the model and n-gram baselines on them); this module only adds the corruption.

- ``repeated-identifier``: at the second occurrence of a multi-token identifier, predict its second token; the
  evidence is that token in the first occurrence.
- ``self-attribute``: after ``self.``, predict the first token of an attribute already used in the context;
  the evidence is that token after the earlier ``self.``.

Prompt: the held-out context up to the scored position (BOS first), right-padded to the longest prompt.
Answer: the target token. Corruption: the evidence token replaced by a random ordinary token ``r'`` that does
not occur in the prompt, so the copy now points at ``r'``; the wrong answer is ``r'``. Clean and corrupted
prompts have the same tokens everywhere else, and the same length.
"""

from __future__ import annotations

from typing import Any

import torch

from interp.circuits.tasks import Task, pad_id
from interp.errors import InterpError

CODE_TASKS = {"repeated-identifier": "repeated_identifier", "self-attribute": "self_attribute"}
"""Circuit task name -> the zoo's task name."""


def _heldout_items(model: Any, zoo_task: str, seq_len: int) -> tuple[torch.Tensor, Any]:
    from interp.model.stdlib import iter_stdlib_documents
    from interp.zoo.tasks import encode_documents, find_items, pack_documents

    tok = model.tokenizer
    if tok.bos_token_id is None or tok.eos_token_id is None:
        raise InterpError("The code tasks pack held-out files with BOS and EOS tokens; this tokenizer lacks one.")
    documents = encode_documents(tok, list(iter_stdlib_documents("heldout")))
    text = pack_documents(documents, min(seq_len, model.info.n_ctx), tok.bos_token_id, tok.eos_token_id)
    return text.contexts, find_items(text, zoo_task)


def code_task(model: Any, n_prompts: int = 32, seed: int = 0, seq_len: int = 128, *, name: str) -> Task:
    """The code task ``name`` (a key of ``CODE_TASKS``) as ``n_prompts`` seeded prompt pairs."""
    contexts, items = _heldout_items(model, CODE_TASKS[name], seq_len)
    if len(items.target) < n_prompts:
        raise InterpError(f"The held-out text has {len(items.target)} {name} items; ask for at most that many.")
    gen = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(items.target), generator=gen)[:n_prompts].tolist()
    special = set(getattr(model.tokenizer, "all_special_ids", []) or [])
    width = int(max(items.position[i] for i in chosen)) + 1
    clean = torch.full((n_prompts, width), pad_id(model.tokenizer), dtype=torch.long)
    corrupted, wrong = clean.clone(), torch.empty(n_prompts, 1, dtype=torch.long)
    for row, i in enumerate(chosen):
        pos, source = int(items.position[i]), int(items.source[i])
        prompt = contexts[int(items.context[i]), : pos + 1]
        clean[row, : pos + 1] = prompt
        used = set(prompt.tolist()) | special | {int(items.target[i])}
        while (other := int(torch.randint(model.info.d_vocab, (1,), generator=gen))) in used:
            pass
        corrupted[row, : pos + 1] = prompt
        corrupted[row, source] = other
        wrong[row, 0] = other
    positions = torch.tensor([int(items.position[i]) for i in chosen])
    answers = torch.tensor([[int(items.target[i])] for i in chosen])
    return Task(name, clean, corrupted, answers, wrong, "logit_diff", positions, positions,
                description=f"{name} on held-out stdlib text; the evidence token replaced by a random token; "
                            "logit(target) - logit(replacement)",
                info={"seed": seed, "seq_len": seq_len, "zoo_task": CODE_TASKS[name]})
