"""Regenerate tests/data/tokenizer/tiny-command-r/: a ~500-token byte-level BPE with Command-R's
pipeline (NFC, single digits, ByteLevel), Command-R's special tokens and tokenizer_config.json
(chat templates = the built-in Command-R ones, which equal c4ai-command-r-v01's).

Special-token layout follows ggml-vocab-command-r.gguf: ids 0-7 are <PAD> <UNK> <CLS> <SEP>
<MASK_TOKEN> <BOS_TOKEN> <EOS_TOKEN> <EOP_TOKEN> (special); the turn tokens are added tokens,
<|END_OF_TURN_TOKEN|> special (it is EOS), the others not (as their token_type there says).

    python tests/data/tokenizer/make_tiny_command_r.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))
from pycohere.chat import builtin_templates  # noqa: E402

OUT = HERE / "tiny-command-r"
SPECIAL = ["<PAD>", "<UNK>", "<CLS>", "<SEP>", "<MASK_TOKEN>", "<BOS_TOKEN>", "<EOS_TOKEN>", "<EOP_TOKEN>"]
TURN_TOKENS = ["<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>",
               "<|SYSTEM_TOKEN|>"]
CORPUS = [
    "Hello world! Hello this is a test of the tiny Command-R tokenizer.",
    "The Emperor penguin is the tallest penguin; emperor penguins only live in Antarctica.",
    "What's the biggest penguin in the world? It grows to 122 centimetres.",
    "Write 'Action:' followed by a json-formatted list of actions.",
    "Äpfel und Birnen, crème brûlée, naïve café. Ελληνικά, русский язык, 日本語のテキスト、中文文本。",
    "Emoji: 🦙 🚀 👍🏽 and CJK 你好世界 안녕하세요",
    "def internet_search(query: str) -> List[Dict]:\n    pass\n",
]


def main() -> None:
    tok = Tokenizer(BPE(fuse_unk=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=480, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS * 20, trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    tok.add_tokens([AddedToken(t, special=(t == "<|END_OF_TURN_TOKEN|>"), normalized=False) for t in TURN_TOKENS])
    OUT.mkdir(exist_ok=True)
    tok.save(str(OUT / "tokenizer.json"))
    templates = builtin_templates()
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<BOS_TOKEN>",
        "eos_token": "<|END_OF_TURN_TOKEN|>",
        "pad_token": "<PAD>",
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "model_max_length": 1000000000000000019884624838656,
        "padding_side": "left",
        "tokenizer_class": "CohereTokenizer",
        "use_default_system_prompt": False,
        "chat_template": [{"name": name, "template": text} for name, text in templates.items()],
    }
    (OUT / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    specials = {"bos_token": {"content": "<BOS_TOKEN>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
                "eos_token": {"content": "<|END_OF_TURN_TOKEN|>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
                "pad_token": {"content": "<PAD>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}}
    (OUT / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {OUT}: vocab {tok.get_vocab_size()}")


if __name__ == "__main__":
    main()
