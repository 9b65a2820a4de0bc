"""A chat tokenizer on the `tokenizers` library alone: tokenizer.json plus the chat template.

transformers' AutoTokenizer resolves the model's config class first, and that import chain costs
seconds (see generation.llama); this needs only what `import transformers` has already loaded. It
takes folders whose tokenizer.json transformers itself would use unchanged; `from_folder` returns
None for any other, and the caller falls back to AutoTokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Tokenizer classes that load tokenizer.json as it is, with no rebuilding or legacy rules.
_VERBATIM = {"TokenizersBackend", "PreTrainedTokenizerFast"}


class ChatTokenizer:
    def __init__(self, tokenizer: Any, chat_template: str, special_tokens: dict[str, str]) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.special_tokens = special_tokens
        eos = special_tokens.get("eos_token")
        self.eos_token_id: int | None = None if eos is None else tokenizer.token_to_id(eos)

    @classmethod
    def from_folder(cls, folder: Path) -> ChatTokenizer | None:
        config_path, tokenizer_path = folder / "tokenizer_config.json", folder / "tokenizer.json"
        if not (config_path.is_file() and tokenizer_path.is_file()):
            return None
        config = json.loads(config_path.read_text())
        template_path = folder / "chat_template.jinja"
        template = (
            template_path.read_text() if template_path.is_file() else config.get("chat_template")
        )
        if (
            config.get("tokenizer_class") not in _VERBATIM
            or config.get("clean_up_tokenization_spaces")
            or not isinstance(template, str)
        ):
            return None
        from tokenizers import Tokenizer

        special = {}
        for key, value in config.items():
            content = value.get("content") if isinstance(value, dict) else value
            if key.endswith("_token") and isinstance(content, str):
                special[key] = content
        # Read here, not by Tokenizer.from_file: that raises a bare Exception for a file it may not
        # read as for one it cannot parse, and the model cache is made again only for the second.
        tokenizer = Tokenizer.from_str(tokenizer_path.read_text(encoding="utf-8"))
        return cls(tokenizer, template, special)

    def __len__(self) -> int:
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    def render(self, messages: list[dict[str, str]], *, add_generation_prompt: bool) -> str:
        # transformers' own renderer (sandboxed Jinja, its filters and globals), already imported.
        from transformers.utils.chat_template_utils import render_jinja_template

        variables: dict[str, Any] = dict(self.special_tokens)
        # Annotated as returning str; it returns (rendered chats, generation indices).
        result: Any = render_jinja_template(
            conversations=[messages],
            chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
        return str(result[0][0])

    def apply_chat_template(
        self,
        messages: list[dict[str, str]],
        *,
        add_generation_prompt: bool = False,
        return_tensors: str | None = None,
        return_dict: bool = False,
    ) -> Any:
        """Token ids of the rendered chat, as transformers' method of the same name returns them."""
        text = self.render(messages, add_generation_prompt=add_generation_prompt)
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if return_tensors is None and not return_dict:
            return ids
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors must be 'pt' or None, got {return_tensors!r}")
        import torch

        input_ids: Any = ids if return_tensors is None else torch.tensor([ids])
        mask: Any = [1] * len(ids) if return_tensors is None else torch.ones_like(input_ids)
        return {"input_ids": input_ids, "attention_mask": mask} if return_dict else input_ids

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens))

    def batch_decode(self, batch: list[list[int]], skip_special_tokens: bool = False) -> list[str]:
        return list(self.tokenizer.decode_batch(batch, skip_special_tokens=skip_special_tokens))
