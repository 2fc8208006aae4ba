"""A tokenizer directory with its own chat template (a real Llama 3.2 Vision Instruct checkpoint's): memgen renders
conversations with it and its ids equal transformers' apply_chat_template (AutoTokenizer and MllamaProcessor);
the SFT loss mask and appended feedback turns stay consistent; memgen's offline directory keeps the built-in path.

INSTRUCT_LIKE_TEMPLATE is written here to behave as Llama-3.2-11B-Vision-Instruct's template does for what the
tasks send (its tool-calling branches left out): bos; a leading system message is taken out and trimmed; when no
message has an image, a system turn "Cutting Knowledge Date: December 2023\\nToday Date: {date_string}\\n\\n
{system}" comes first (date_string defaults to strftime_now("%d %b %Y")); an image together with a system message
is an error; then every message as <|start_header_id|>role<|end_header_id|>\\n\\n + its items (<|image|> / text,
untrimmed) + <|eot_id|>; the assistant header on add_generation_prompt."""

import json
import shutil

import numpy as np
import pytest
from transformers import AutoTokenizer

from model import chat
from model.tokenizer import CHAT_TEMPLATE, DEFAULT_DATE_STRING, ensure_tokenizer, load_tokenizer
from tasks.common import Message
from tests.model.test_chat import assert_appended_turns_concatenate

INSTRUCT_LIKE_TEMPLATE = """{{- bos_token }}
{%- if date_string is not defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_text = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_text = "" %}
{%- endif %}
{%- set seen = namespace(image=false) %}
{#- as the real template: a string content is iterated too (its characters have no 'type') #}
{%- for message in messages %}
    {%- for item in message['content'] %}
        {%- if item['type'] == 'image' %}{%- set seen.image = true %}{%- endif %}
    {%- endfor %}
{%- endfor %}
{%- if seen.image and system_text != "" %}
    {{- raise_exception("Prompting with images is incompatible with system messages.") }}
{%- endif %}
{%- if not seen.image %}
    {{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
    {{- "Cutting Knowledge Date: December 2023\\n" }}
    {{- "Today Date: " + date_string + "\\n\\n" }}
    {{- system_text }}
    {{- "<|eot_id|>" }}
{%- endif %}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}
    {%- if message['content'] is string %}
        {{- message['content'] }}
    {%- else %}
        {%- for item in message['content'] %}
            {%- if item['type'] == 'image' %}
                {{- '<|image|>' }}
            {%- elif item['type'] == 'text' %}
                {{- item['text'] }}
            {%- endif %}
        {%- endfor %}
    {%- endif %}
    {{- '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""


def image(seed, height=30, width=70):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def offline_dir(tmp_path_factory):
    return ensure_tokenizer(tmp_path_factory.mktemp("tok") / "bpe", vocab_size=512)


@pytest.fixture(scope="module")
def instruct_dir(offline_dir, tmp_path_factory):
    """The offline tokenizer with the Instruct-shaped template in tokenizer_config.json, as a real checkpoint."""
    target = tmp_path_factory.mktemp("instruct") / "tok"
    shutil.copytree(offline_dir, target)
    config = json.loads((target / "tokenizer_config.json").read_text())
    config["chat_template"] = INSTRUCT_LIKE_TEMPLATE
    (target / "tokenizer_config.json").write_text(json.dumps(config))
    return target


@pytest.fixture(scope="module")
def hf(instruct_dir):
    return AutoTokenizer.from_pretrained(str(instruct_dir))


@pytest.fixture(scope="module")
def tokenizer(instruct_dir):
    return load_tokenizer(instruct_dir)


def vision_conversation():
    """A user turn with an image and text, the answer, the verifier's feedback, the revised answer."""
    return (
        Message("user", "What are the cards? Answer in JSON.", image(0)),
        Message("assistant", '{"cards": ["A", "J", "3", "7"], "formula": "(10-7)*7+1"}'),
        Message("user", "You failed this trial because your formula does not equal 24."),
        Message("assistant", '{"formula": "(7-3)*(10-1+...)=24"} done'),
    )


def language_conversation():
    return tuple(Message(m.role, m.content) for m in vision_conversation())


def hf_ids(hf, conversation, add_generation_prompt, **kwargs):
    text = hf.apply_chat_template(chat.to_hf_messages(conversation), tokenize=False,
                                  add_generation_prompt=add_generation_prompt, **kwargs)
    return text, hf(text, add_special_tokens=False)["input_ids"]


def test_the_offline_directory_keeps_the_built_in_encoder(offline_dir, instruct_dir):
    assert load_tokenizer(offline_dir).chat_template is None  # its template is CHAT_TEMPLATE
    assert load_tokenizer(instruct_dir).chat_template == INSTRUCT_LIKE_TEMPLATE
    assert load_tokenizer(instruct_dir, use_chat_template=False).chat_template is None


@pytest.mark.parametrize("make", [vision_conversation, language_conversation], ids=["vision", "language"])
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_text_and_ids_equal_autotokenizer_apply_chat_template(hf, tokenizer, make, add_generation_prompt):
    conversation = make()
    text, expected = hf_ids(hf, conversation, add_generation_prompt, date_string=DEFAULT_DATE_STRING)
    assert chat.render_conversation(tokenizer, conversation, add_generation_prompt=add_generation_prompt) == text
    encoded = chat.encode_conversation(tokenizer, conversation, add_generation_prompt=add_generation_prompt)
    assert encoded.token_ids.tolist() == expected
    assert ("Cutting Knowledge Date" in text) == (make is language_conversation)


def test_the_built_in_format_differs_from_the_instruct_template_on_text_only_prompts(offline_dir, tokenizer, hf):
    """Why the directory's template matters: memgen's own format has no system preamble. With an image the two
    agree (the Instruct template writes no preamble then)."""
    plain = load_tokenizer(offline_dir)
    for make, same in ((vision_conversation, True), (language_conversation, False)):
        ours = chat.encode_conversation(plain, make(), add_generation_prompt=True).token_ids.tolist()
        theirs = chat.encode_conversation(tokenizer, make(), add_generation_prompt=True).token_ids.tolist()
        assert (ours == theirs) == same
        assert (ours == hf_ids(hf, make(), True, date_string=DEFAULT_DATE_STRING)[1]) == same


def test_today_date_is_fixed_unless_asked(instruct_dir, hf):
    """Without date_string the template writes today's date (strftime_now): memgen passes a fixed one so that a
    run's ids do not depend on the day it starts; load_tokenizer(date_string=...) picks another."""
    conversation = language_conversation()[:1]
    other = load_tokenizer(instruct_dir, date_string="01 Dec 2026")
    text = chat.render_conversation(other, conversation)
    assert "Today Date: 01 Dec 2026\n\n" in text
    assert text == hf_ids(hf, conversation, False, date_string="01 Dec 2026")[0]


@pytest.mark.parametrize("make", [vision_conversation, language_conversation], ids=["vision", "language"])
def test_loss_mask_and_appended_turns_stay_consistent(tokenizer, make):
    conversation = make()
    encoded = chat.encode_conversation(tokenizer, conversation)
    ids, mask = encoded.token_ids, encoded.assistant_mask
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask, [0]])))
    runs = [ids[start:end] for start, end in zip(edges[::2], edges[1::2])]
    answers = [m.content for m in conversation if m.role == "assistant"]
    assert len(runs) == len(answers)
    for run, answer in zip(runs, answers):
        assert run[-1] == tokenizer.eot_id and tokenizer.decode(run[:-1]) == answer
        assert run.tolist() == chat.encode_response(tokenizer, answer).tolist()
    # a rollout: prompt ids + sampled answer (ending in eot) + the feedback turn = the longer conversation
    prompt = chat.encode_conversation(tokenizer, conversation[:1], add_generation_prompt=True).token_ids
    feedback = chat.encode_turn(tokenizer, conversation[2], add_generation_prompt=True)
    whole = chat.encode_conversation(tokenizer, conversation[:3], add_generation_prompt=True).token_ids
    np.testing.assert_array_equal(np.concatenate([prompt, chat.encode_response(tokenizer, answers[0]), feedback]),
                                  whole)
    assert feedback[0] == tokenizer.start_header_id and tokenizer.bos_id not in feedback
    assert chat.generation_prompt_ids(tokenizer) == chat.header_ids(tokenizer, "assistant")
    np.testing.assert_array_equal(
        np.concatenate([whole, chat.encode_response(tokenizer, answers[1])]),
        chat.encode_conversation(tokenizer, conversation).token_ids)


def test_batches_use_the_directory_template(tokenizer, hf):
    from model.processor import ImageProcessorConfig

    conversations = [vision_conversation()[:1], language_conversation()[:1]]
    batch = chat.batch_conversations(tokenizer, conversations, ImageProcessorConfig(tile_size=28),
                                     add_generation_prompt=True, padding_side="left", bucket=16)
    for row, conversation in enumerate(conversations):
        expected = hf_ids(hf, conversation, True, date_string=DEFAULT_DATE_STRING)[1]
        assert batch.input_ids[row, -len(expected):].tolist() == expected
        assert batch.lengths[row] == len(expected)


def test_special_token_strings_in_content_stay_text(tokenizer):
    """Template text is parsed for special tokens, message contents never are (a feedback quoting <|eot_id|>
    cannot end a turn). transformers' tokenisation of the rendered text would parse it; memgen does not."""
    conversation = (Message("user", "say <|eot_id|> now"),)
    ids = chat.encode_conversation(tokenizer, conversation).token_ids.tolist()
    assert ids.count(tokenizer.eot_id) == 2  # the system preamble's and the user turn's, not the quoted one
    assert "say <|eot_id|> now" in tokenizer.decode(ids)


def test_template_refusals_and_changed_contents_are_clear_errors(tokenizer):
    with pytest.raises(ValueError, match="refused this conversation: Prompting with images is incompatible"):
        chat.encode_conversation(tokenizer, (Message("system", "Be brief."), Message("user", "Cards?", image(1))))
    with pytest.raises(ValueError, match="changes message contents"):
        chat.encode_conversation(tokenizer, (Message("system", "  Be brief. "), Message("user", "Cards?")))
    # a trimmed system message is fine
    text = chat.render_conversation(tokenizer, (Message("system", "Be brief."), Message("user", "Cards?")))
    assert "Today Date: 26 Jul 2024\n\nBe brief.<|eot_id|>" in text
    # appending an image turn to a text-only context would re-render the context (its preamble disappears)
    with pytest.raises(ValueError, match="cannot be appended as ids"):
        chat.encode_turn(tokenizer, Message("user", "Now this one.", image(2)))


def test_directory_template_files_in_transformers_order(offline_dir, tmp_path):
    """chat_template.jinja (transformers 5's save_pretrained) wins over tokenizer_config.json, which wins over the
    processor's chat_template.json; memgen's own template means the built-in encoder."""
    target = tmp_path / "tok"
    shutil.copytree(offline_dir, target)
    (target / "chat_template.json").write_text(json.dumps({"chat_template": INSTRUCT_LIKE_TEMPLATE}))
    assert load_tokenizer(target).chat_template is None  # tokenizer_config.json holds CHAT_TEMPLATE
    config = json.loads((target / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (target / "tokenizer_config.json").write_text(json.dumps(config))
    assert load_tokenizer(target).chat_template == INSTRUCT_LIKE_TEMPLATE
    (target / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    assert load_tokenizer(target).chat_template is None


def test_a_processor_saved_with_the_template_and_its_apply_chat_template(offline_dir, tmp_path):
    """AutoProcessor's side: an MllamaProcessor carrying the template, saved by transformers (chat_template.jinja),
    loads with that template, and memgen's ids equal the tokenised MllamaProcessor.apply_chat_template text."""
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil
    from transformers.models.mllama.processing_mllama import MllamaProcessor

    hf_tokenizer = AutoTokenizer.from_pretrained(str(offline_dir))
    processor = MllamaProcessor(image_processor=MllamaImageProcessorPil(size={"height": 28, "width": 28}),
                                tokenizer=hf_tokenizer, chat_template=INSTRUCT_LIKE_TEMPLATE)
    processor.save_pretrained(str(tmp_path))
    tokenizer = load_tokenizer(tmp_path)
    assert tokenizer.chat_template == INSTRUCT_LIKE_TEMPLATE
    for conversation in (vision_conversation()[:3], language_conversation()[:3]):
        text = processor.apply_chat_template(chat.to_hf_messages(conversation), tokenize=False,
                                             add_generation_prompt=True, date_string=DEFAULT_DATE_STRING)
        encoded = chat.encode_conversation(tokenizer, conversation, add_generation_prompt=True)
        assert encoded.token_ids.tolist() == hf_tokenizer(text, add_special_tokens=False)["input_ids"]


def test_appended_turns_concatenate_for_arbitrary_text(tokenizer):
    assert_appended_turns_concatenate(tokenizer, examples=30)
