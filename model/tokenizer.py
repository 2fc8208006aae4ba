"""Tokenizers for the policy: an offline Llama-3-style byte-level BPE for tiny/small models, the Llama 3.2 Vision chat
template, and `ChatTokenizer`, the one view of a tokenizer directory (ours or a real Llama's) that the encoders use.

The offline tokenizer is trained here with the `tokenizers` library on a corpus this module generates itself (the
words of the GeneralPoints and V-IRL prompts, JSON answers, verifier feedback), so nothing is downloaded. It has
Llama 3's pipeline (the same split regex, byte-level BPE with ignore_merges, a template post-processor that adds
`<|begin_of_text|>`) and Llama 3's special tokens in Llama 3's order, after the regular tokens:

  ids 0 .. R-1              regular tokens (256 byte tokens + R - 256 merges), R = vocab_size - 16
  R + 0  <|begin_of_text|>   R + 1  <|end_of_text|>   R + 2, R + 3  reserved   R + 4  <|finetune_right_pad_id|>
  R + 5  reserved            R + 6  <|start_header_id|>   R + 7  <|end_header_id|>  R + 8  <|eom_id|>
  R + 9  <|eot_id|>          R + 10 <|python_tag|>    R + 11 .. R + 15  reserved
  vocab_size = R + 16        <|image|>                (as in mllama: <|image|> = 128256 = vocab_size; the text
                                                        embedding table has vocab_size + 8 rows, lm_head vocab_size)

It is saved as a Hugging Face tokenizer directory (tokenizer.json, tokenizer_config.json with the chat template,
special_tokens_map.json) that `transformers.AutoTokenizer.from_pretrained` loads offline as the same
`PreTrainedTokenizerFast` class a real Llama 3.2 checkpoint uses.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

BEGIN_OF_TEXT = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
EOM = "<|eom_id|>"
PYTHON_TAG = "<|python_tag|>"
PAD = "<|finetune_right_pad_id|>"
IMAGE = "<|image|>"

# Llama 3's first special tokens in Llama 3's order (128000 ..), then reserved ones up to NUM_SPECIAL_TOKENS.
_LLAMA3_SPECIAL_ORDER = (
    BEGIN_OF_TEXT, END_OF_TEXT, "<|reserved_special_token_0|>", "<|reserved_special_token_1|>", PAD,
    "<|reserved_special_token_2|>", START_HEADER, END_HEADER, EOM, EOT, PYTHON_TAG,
)
NUM_SPECIAL_TOKENS = 16
SPECIAL_TOKENS = _LLAMA3_SPECIAL_ORDER + tuple(
    f"<|reserved_special_token_{k}|>" for k in range(3, 3 + NUM_SPECIAL_TOKENS - len(_LLAMA3_SPECIAL_ORDER))
)
NUM_BYTE_TOKENS = 256
MIN_VOCAB_SIZE = NUM_BYTE_TOKENS + NUM_SPECIAL_TOKENS  # 272: the byte alphabet and the specials, no merges
DEFAULT_VOCAB_SIZE = 1024

# Llama 3's pre-tokenizer split (tiktoken's cl100k pattern with digits in groups of at most 3).
LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Llama 3.2 Vision's turn structure. Content is either a string or a list of {"type": "image"} /
# {"type": "text", "text": ...} items (transformers' multimodal chat format), rendered in order; no trimming, so
# the rendered text is exactly what `model.chat` encodes.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['content'] is string %}"
    "{{- message['content'] }}"
    "{%- else %}"
    "{%- for item in message['content'] %}"
    "{%- if item['type'] == 'image' %}{{- '<|image|>' }}"
    "{%- elif item['type'] == 'text' %}{{- item['text'] }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- endif %}"
    "{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

# What a directory's template gets for `date_string` (Llama 3.2 Instruct templates write "Today Date: ..." into the
# system turn of text-only prompts and would otherwise call strftime_now(), making the ids depend on the day a run
# starts). This is the fallback date the Llama 3.x templates themselves use.
DEFAULT_DATE_STRING = "26 Jul 2024"

# Bump when the corpus or the pipeline changes: cached directories built by an older version are rebuilt.
TOKENIZER_VERSION = 1
_BUILD_RECORD = "memgen_tokenizer.json"


# ----------------------------------------------------------------------------------------------- the corpus

_RANKS = ("A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K")
_SUITS = ("spades", "hearts", "diamonds", "clubs")
_DIRECTIONS = ("north", "northeast", "east", "southeast", "south", "southwest", "west", "northwest")
_RELATIVE = ("left", "right", "slightly left", "slightly right")
_STREET_WORDS = (
    "Main", "Broadway", "Park", "Madison", "Lexington", "Amsterdam", "Columbus", "Houston", "Canal", "Bleecker",
    "Spring", "Prince", "Grand", "Hudson", "Greenwich", "Bowery", "Delancey", "Chambers", "Fulton", "Water",
    "Church", "Market", "Union", "Liberty", "Maple", "Oak", "Cedar", "Pine", "Elm", "Washington", "Lincoln",
    "Franklin", "Jefferson", "Central", "River", "Lake", "Hill", "Mill", "Bridge", "Station", "Harbor",
)
_STREET_KINDS = ("Street", "Avenue", "Road", "Boulevard", "Place", "Lane", "Drive", "Square", "Way")
_LANDMARKS = (
    "Starbucks", "Chase Bank", "CVS Pharmacy", "Duane Reade", "McDonald's", "Subway", "Whole Foods", "Target",
    "the public library", "City Hall", "the post office", "a bakery", "a pizza place", "a coffee shop",
    "the museum", "a hotel", "the church", "a gas station", "the school", "the park entrance", "a bookstore",
    "Trader Joe's", "Walgreens", "the hospital", "a theater", "the bus stop", "a restaurant", "the fire station",
)
_SPATIAL = ("on your left", "on your right", "on your front", "behind you", "on your front left",
            "on your front right", "on your back left", "on your back right")
_FEEDBACK = (
    "Your formula does not equal {target}.", "You used a number that is not in the cards.",
    "Each card must be used exactly once.", "The formula contains illegal characters.",
    "The cards you recognised are wrong.", "Your answer could not be parsed as JSON.",
    "The action is not correct.", "You did not detect the intersection.", "The landmark observation is wrong.",
    "Correct! Well done.", "Try again and check your arithmetic.", "You have exceeded the number of attempts.",
)
_PROSE = (
    "You are an expert {target} points card game player. You will receive a set of {n} cards.",
    "Note that 'J', 'Q', and 'K' count as '{face}', and each card must be used once.",
    "Your goal is to output a formula that evaluates to {target}, using numbers from the cards and operators "
    "such as '+', '-', '*', '/', '(', ')', and '='.",
    "The cards are shown in the image. Recognise each card and report its value.",
    "Your output should be a JSON object with the keys \"cards\", \"number\" and \"formula\".",
    "You are an expert in navigation. You will receive a sequence of instructions to follow while observing "
    "your surrounding street views.",
    "You are also given your observation and action history in text. Your goal is to first identify the current "
    "observation and the current instruction, then take an action.",
    "The available actions are forward(), turn_direction(x) and stop(), where x is one of {dirs}.",
    "Your response should be a JSON object with the keys \"current observation\", \"current instruction\" and "
    "\"action\".",
    "You failed this trial because {feedback}",
    "Please think step by step and answer with the JSON object only.",
    "The quick brown fox jumps over the lazy dog while the weather is nice and the streets are quiet.",
    "Move forward until you reach the next intersection, then turn and keep walking to the destination.",
    "First, turn to face {dir}. Then move forward until the intersection where {landmark} is {spatial}.",
)


def _card_answer(rng: np.random.Generator) -> str:
    ranks = [str(rng.choice(_RANKS)) for _ in range(4)]
    values = [min(_RANKS.index(r) + 1, 10) for r in ranks]
    ops = [str(rng.choice(["+", "-", "*", "/"])) for _ in range(3)]
    formula = f"({values[0]}{ops[0]}{values[1]}){ops[1]}{values[2]}{ops[2]}{values[3]}=24"
    if rng.random() < 0.5:
        formula = f"{values[0]} {ops[0]} {values[1]} {ops[1]} {values[2]} {ops[2]} {values[3]} = 24"
    cards = ", ".join(f'"{r}"' for r in ranks)
    numbers = ", ".join(str(v) for v in values)
    return f'{{"cards": [{cards}], "number": [{numbers}], "formula": "{formula}"}}'


def _street(rng: np.random.Generator) -> str:
    if rng.random() < 0.3:
        n = int(rng.integers(1, 130))
        suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
        return f"{'West' if rng.random() < 0.5 else 'East'} {n}{suffix} {rng.choice(_STREET_KINDS)}"
    return f"{rng.choice(_STREET_WORDS)} {rng.choice(_STREET_KINDS)}"


def _navigation_answer(rng: np.random.Generator) -> str:
    landmark = rng.choice(_LANDMARKS)
    observation = f"{landmark} is {rng.choice(_SPATIAL)}; You observe an intersection"
    if rng.random() < 0.4:
        observation = "No landmarks nearby; "
    action = rng.choice(["forward()", "stop()", f"turn_direction({rng.choice(_DIRECTIONS + _RELATIVE)})"])
    instruction = f"Turn to face {rng.choice(_DIRECTIONS)} and move forward until {_street(rng)}."
    return json.dumps({"current observation": observation, "current instruction": instruction, "action": action})


def _sentence(rng: np.random.Generator) -> str:
    template = str(rng.choice(_PROSE))
    feedback = str(rng.choice(_FEEDBACK)).format(target=int(rng.choice([24, 24, 24, 23, 25])))
    return template.format(
        target=int(rng.choice([24, 24, 24, 23, 25])), n=4, face=str(rng.choice(["10", "11", "12", "13"])),
        dirs=", ".join(_DIRECTIONS), dir=rng.choice(_DIRECTIONS), landmark=rng.choice(_LANDMARKS),
        spatial=rng.choice(_SPATIAL), feedback=feedback.lower(),
    )


def _history(rng: np.random.Generator) -> str:
    lines = []
    for k in range(1, int(rng.integers(2, 5))):
        lines.append(f"O_{k}: {rng.choice(_LANDMARKS)} is {rng.choice(_SPATIAL)}")
        lines.append(f"A_{k}: turn_direction({rng.choice(_DIRECTIONS)})" if rng.random() < 0.5 else f"A_{k}: forward()")
    return "\n".join(lines)


def training_corpus(seed: int = 0, num_lines: int = 3000) -> list[str]:
    """The deterministic text the offline tokenizer is trained on: prompt prose, JSON answers for both tasks,
    verifier feedback, card labels, arithmetic and navigation histories."""
    rng = np.random.default_rng(seed)
    makers = (_sentence, _card_answer, _navigation_answer, _history,
              lambda r: f"[Input] Cards: {', '.join(str(r.choice(_RANKS)) for _ in range(4))}",
              lambda r: f"{r.choice(_SUITS)} {r.choice(_RANKS)} of {r.choice(_SUITS)}; {r.integers(0, 1000)} "
                        f"{r.integers(0, 100)}.{r.integers(0, 100)} meters",
              lambda r: f"Head {r.choice(_DIRECTIONS)} on {_street(r)} towards {r.choice(_LANDMARKS)}.")
    lines = [makers[int(rng.integers(len(makers)))](rng) for _ in range(num_lines)]
    # Prompts are paragraphs and every chat turn starts with "\n\n": join some lines the same way.
    return [
        "\n\n".join(lines[k : k + 3]) if k % 2 else "\n".join(lines[k : k + 3]) for k in range(0, len(lines), 3)
    ]


# ----------------------------------------------------------------------------------------------- building


def _llama3_pipeline(model: models.BPE) -> Tokenizer:
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    return tokenizer


def train_tokenizer(vocab_size: int = DEFAULT_VOCAB_SIZE, seed: int = 0) -> Tokenizer:
    """The offline byte-level BPE (a `tokenizers.Tokenizer`) with vocab_size - 16 regular tokens and the 16
    Llama 3 special tokens after them, then `<|image|>` = vocab_size. Deterministic in its arguments."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"tokenizer vocab_size={vocab_size} is too small: byte-level BPE needs at least {MIN_VOCAB_SIZE} "
            f"({NUM_BYTE_TOKENS} bytes + {NUM_SPECIAL_TOKENS} special tokens); choose a larger vocab_size."
        )
    regular = vocab_size - NUM_SPECIAL_TOKENS
    tokenizer = _llama3_pipeline(models.BPE(ignore_merges=True))
    trainer = trainers.BpeTrainer(
        vocab_size=regular, min_frequency=0, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[],
    )
    tokenizer.train_from_iterator(training_corpus(seed), trainer=trainer)
    trained = tokenizer.get_vocab_size(with_added_tokens=False)
    if trained != regular:
        raise ValueError(
            f"the generated corpus only supports {trained} regular tokens, not the {regular} that "
            f"vocab_size={vocab_size} needs; choose vocab_size <= {trained + NUM_SPECIAL_TOKENS}."
        )
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (*SPECIAL_TOKENS, IMAGE)])
    bos = tokenizer.token_to_id(BEGIN_OF_TEXT)
    tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(
            single=f"{BEGIN_OF_TEXT} $A", pair=f"{BEGIN_OF_TEXT} $A {BEGIN_OF_TEXT}:1 $B:1",
            special_tokens=[(BEGIN_OF_TEXT, bos)],
        ),
    ])
    if tokenizer.token_to_id(IMAGE) != vocab_size or bos != regular:
        raise AssertionError("special token ids are not laid out as documented")  # a tokenizers behaviour change
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, directory: str | Path, build_record: dict | None = None) -> Path:
    """Write `tokenizer` as a Hugging Face tokenizer directory loadable by `AutoTokenizer.from_pretrained`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    special_map = {"bos_token": BEGIN_OF_TEXT, "eos_token": EOT, "pad_token": PAD}
    added = {
        str(tokenizer.token_to_id(t)): {
            "content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True,
        }
        for t in (*SPECIAL_TOKENS, IMAGE)
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special_map,
        "added_tokens_decoder": added,
        "clean_up_tokenization_spaces": True,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 131072,
        "chat_template": CHAT_TEMPLATE,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (directory / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2, sort_keys=True) + "\n")
    if build_record is not None:
        (directory / _BUILD_RECORD).write_text(json.dumps(build_record, sort_keys=True) + "\n")
    return directory


def default_tokenizer_dir(vocab_size: int = DEFAULT_VOCAB_SIZE, seed: int = 0) -> Path:
    """Where `ensure_tokenizer` caches by default: $MEMGEN_CACHE (else ~/.cache/memgen)/tokenizers/..."""
    root = Path(os.environ.get("MEMGEN_CACHE", Path.home() / ".cache" / "memgen"))
    return root / "tokenizers" / f"bpe-v{TOKENIZER_VERSION}-vocab{vocab_size}-seed{seed}"


def ensure_tokenizer(
    directory: str | Path | None = None, vocab_size: int = DEFAULT_VOCAB_SIZE, seed: int = 0
) -> Path:
    """The offline tokenizer's directory, built there first if it is missing or was built with other arguments.

    Building writes into a temporary sibling and renames it into place, so concurrent callers never see a
    half-written directory."""
    directory = Path(directory) if directory is not None else default_tokenizer_dir(vocab_size, seed)
    record = {"version": TOKENIZER_VERSION, "vocab_size": vocab_size, "seed": seed}
    record_path = directory / _BUILD_RECORD
    if record_path.is_file() and (directory / "tokenizer.json").is_file():
        try:
            if json.loads(record_path.read_text()) == record:
                return directory
        except ValueError:
            pass
    tokenizer = train_tokenizer(vocab_size, seed)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    save_tokenizer(tokenizer, staging, record)
    if directory.exists():
        shutil.rmtree(directory, ignore_errors=True)
    try:
        staging.rename(directory)
    except OSError:  # another process won the race with the same files
        shutil.rmtree(staging, ignore_errors=True)
    return directory


# ----------------------------------------------------------------------------------------------- using


@dataclass(frozen=True)
class ChatTokenizer:
    """A tokenizer directory's `tokenizers.Tokenizer` plus the special ids the encoders need.

    vocab_size is the text vocabulary (the lm_head size) and equals image_id, as in mllama. stop_ids are the
    ids that end a generation (end_of_text, eom, eot). pad_id is `<|finetune_right_pad_id|>` (Llama 3's pad)."""

    tokenizer: Tokenizer
    bos_id: int
    eot_id: int
    eom_id: int
    end_of_text_id: int
    start_header_id: int
    end_header_id: int
    pad_id: int
    image_id: int
    # The directory's own chat template when it is not memgen's CHAT_TEMPLATE (e.g. a real Llama 3.2 Vision
    # Instruct checkpoint's, which adds a system preamble to text-only prompts); None = memgen's built-in encoder.
    chat_template: str | None = None
    date_string: str = DEFAULT_DATE_STRING
    # (token string, id) of every added special token, for encoding trusted template text.
    special_tokens: tuple[tuple[str, int], ...] = ()

    @property
    def vocab_size(self) -> int:
        return self.image_id

    @property
    def stop_ids(self) -> tuple[int, ...]:
        return (self.end_of_text_id, self.eom_id, self.eot_id)

    def encode_text(self, text: str) -> list[int]:
        """Token ids of plain text, no special tokens added (special-token strings in it are NOT parsed:
        untrusted text cannot inject `<|eot_id|>` or `<|image|>`)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids if text else []

    def encode_template_text(self, text: str) -> list[int]:
        """Token ids of TRUSTED text (what a chat template writes around the messages): special-token strings in it
        become their ids, the text between them is encoded as `encode_text` does. Never use it on message content."""
        if not self.special_tokens:
            return self.encode_text(text)
        ids: list[int] = []
        lookup = dict(self.special_tokens)
        for piece in _special_splitter(self.special_tokens).split(text):
            if piece in lookup:
                ids.append(lookup[piece])
            elif piece:
                ids.extend(self.encode_text(piece))
        return ids

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)


@functools.lru_cache(maxsize=8)
def _special_splitter(special_tokens: tuple[tuple[str, int], ...]) -> "re.Pattern[str]":
    alternatives = sorted((token for token, _ in special_tokens), key=len, reverse=True)
    return re.compile("(" + "|".join(re.escape(token) for token in alternatives) + ")")


@functools.lru_cache(maxsize=8)
def _compiled_template(template: str):
    """The template compiled in the Jinja environment transformers' apply_chat_template uses (sandboxed,
    trim_blocks, lstrip_blocks, loopcontrols, raise_exception, strftime_now, a json.dumps tojson)."""
    import datetime

    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env.from_string(template)


def render_chat_template(template: str, messages: list[dict], *, add_generation_prompt: bool,
                         date_string: str = DEFAULT_DATE_STRING) -> str:
    """`template` rendered as `tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=...,
    date_string=...)` renders it (Llama's bos/eos/pad token strings, no tools), without importing transformers.
    A template's raise_exception() becomes a ValueError."""
    import jinja2

    try:
        return _compiled_template(template).render(
            messages=messages, tools=None, documents=None, add_generation_prompt=add_generation_prompt,
            bos_token=BEGIN_OF_TEXT, eos_token=EOT, pad_token=PAD, date_string=date_string)
    except jinja2.exceptions.TemplateError as error:
        raise ValueError(f"the tokenizer directory's chat template refused this conversation: {error}") from None


def _directory_chat_template(directory: Path) -> str | None:
    """The chat template a Hugging Face directory carries, in transformers' order: chat_template.jinja, then
    tokenizer_config.json's "chat_template" (a string, or a list of named templates: "default"), then the
    processor's chat_template.json."""
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    for name in ("tokenizer_config.json", "chat_template.json"):
        file = directory / name
        if not file.is_file():
            continue
        try:
            template = json.loads(file.read_text(encoding="utf-8")).get("chat_template")
        except (ValueError, AttributeError):
            raise ValueError(f"{file} is not a valid JSON object; re-download the checkpoint's {name}.") from None
        if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
            template = next((t.get("template") for t in template if isinstance(t, dict)
                             and t.get("name") == "default"), None)
        if isinstance(template, str):
            return template
    return None


def load_tokenizer(directory: str | Path, *, use_chat_template: bool = True,
                   date_string: str = DEFAULT_DATE_STRING) -> ChatTokenizer:
    """A `ChatTokenizer` from a directory with tokenizer.json: ours (`ensure_tokenizer`) or a real Llama 3.2
    Vision checkpoint's.

    When the directory carries a chat template other than memgen's CHAT_TEMPLATE (a real Instruct checkpoint's),
    `model.chat` renders conversations with it, so the ids are those of `apply_chat_template` with that template
    (`date_string` fills its "Today Date"; pass `use_chat_template=False` for memgen's plain turn format)."""
    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"No tokenizer.json in {directory}: pass a Llama 3.2 Vision checkpoint directory or "
                                "one made by model.tokenizer.ensure_tokenizer.")
    tokenizer = Tokenizer.from_file(str(path))
    # Text never turns into special tokens: a feedback message quoting "<|eot_id|>" stays text. (Chat-template
    # tokenisation would parse it; for text without special-token strings the two agree.)
    tokenizer.encode_special_tokens = True
    ids = {}
    for name, token in (("bos_id", BEGIN_OF_TEXT), ("eot_id", EOT), ("eom_id", EOM), ("end_of_text_id", END_OF_TEXT),
                        ("start_header_id", START_HEADER), ("end_header_id", END_HEADER), ("pad_id", PAD),
                        ("image_id", IMAGE)):
        ids[name] = tokenizer.token_to_id(token)
        if ids[name] is None:
            raise ValueError(f"{path} has no {token} token: it is not a Llama 3.2 Vision tokenizer.")
    template = _directory_chat_template(Path(directory)) if use_chat_template else None
    if template is not None and template.strip() == CHAT_TEMPLATE.strip():
        template = None  # memgen's own format: the built-in encoder renders exactly this
    specials = tuple(sorted((added.content, int(index)) for index, added in tokenizer.get_added_tokens_decoder().items()
                            if added.special))
    return ChatTokenizer(tokenizer=tokenizer, **ids, chat_template=template, date_string=date_string,
                         special_tokens=specials)
