"""Tiny random-weight models of real architectures (Qwen2Config, LlamaConfig, MistralConfig), each
with a locally trained BPE tokenizer and a chat template in its family's style, so the trainer's
real-model code paths run with no download:

- ``qwen``: ChatML turns, the tools' JSON schemas in the system turn with Qwen 2.5's instructions,
  tool calls as ``<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>`` (parser ``hermes``);
- ``llama``: Llama 3.x headers, the tools in the first user message, a tool call as the whole
  answer ``{"name": ..., "parameters": ...}`` (parser ``llama3_json``);
- ``mistral``: ``[INST]`` turns, ``[AVAILABLE_TOOLS]`` before the last user message, tool calls as
  ``[TOOL_CALLS][{"name", "arguments", "id"}]`` with 9-character ids, as Mistral's templates demand
  (parser ``mistral``).

The templates are written for these tests in each family's style (same turn markers, tool
placement and call format as the published ones), not copied from any model.
"""

from __future__ import annotations

from pathlib import Path

QWEN_TEMPLATE = r"""
{%- if tools -%}
    {{- '<|im_start|>system\n' -}}
    {%- if messages[0].role == 'system' -%}{{- messages[0].content -}}{%- else -%}{{- 'You are a helpful assistant.' -}}{%- endif -%}
    {{- '\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n' -}}
    {{- 'You are provided with function signatures within <tools></tools> XML tags:\n<tools>' -}}
    {%- for tool in tools -%}{{- '\n' + (tool | tojson) -}}{%- endfor -%}
    {{- '\n</tools>\n\nFor each function call, return a json object with function name and arguments within '
        '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}'
        '\n</tool_call><|im_end|>\n' -}}
{%- elif messages[0].role == 'system' -%}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' -}}
{%- endif -%}
{%- for message in messages -%}
    {%- if message.role == 'user' or (message.role == 'system' and not loop.first) -%}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' -}}
    {%- elif message.role == 'assistant' -%}
        {{- '<|im_start|>assistant' -}}
        {%- if message.content -%}{{- '\n' + message.content -}}{%- endif -%}
        {%- for call in message.tool_calls or [] -%}
            {%- if call.function is defined -%}{%- set call = call.function -%}{%- endif -%}
            {{- '\n<tool_call>\n{"name": "' + call.name + '", "arguments": ' + (call.arguments | tojson) + '}\n</tool_call>' -}}
        {%- endfor -%}
        {{- '<|im_end|>\n' -}}
    {%- elif message.role == 'tool' -%}
        {{- '<|im_start|>user\n<tool_response>\n' + message.content + '\n</tool_response><|im_end|>\n' -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}
"""

LLAMA_TEMPLATE = r"""
{{- bos_token -}}
{%- if messages[0].role == 'system' -%}
    {%- set system_message = messages[0].content | trim -%}
    {%- set messages = messages[1:] -%}
{%- else -%}
    {%- set system_message = '' -%}
{%- endif -%}
{{- '<|start_header_id|>system<|end_header_id|>\n\n' -}}
{%- if tools -%}{{- 'Environment: ipython\n' -}}{%- endif -%}
{{- 'Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n' + system_message + '<|eot_id|>' -}}
{%- if tools -%}
    {%- if messages | length == 0 -%}{{- raise_exception('Tools need a first user message to go in.') -}}{%- endif -%}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- 'Given the following functions, please respond with a JSON for a function call with its proper arguments '
        'that best answers the given prompt.\n\nRespond in the format {"name": function name, "parameters": '
        'dictionary of argument name and its value}. Do not use variables.\n\n' -}}
    {%- for t in tools -%}{{- (t | tojson(indent=4)) + '\n\n' -}}{%- endfor -%}
    {{- (messages[0].content | trim) + '<|eot_id|>' -}}
    {%- set messages = messages[1:] -%}
{%- endif -%}
{%- for message in messages -%}
    {%- if message.role == 'assistant' and message.tool_calls -%}
        {%- if message.tool_calls | length != 1 -%}{{- raise_exception('Only one tool call at a time.') -}}{%- endif -%}
        {%- set call = message.tool_calls[0].function -%}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n{"name": "' + call.name + '", "parameters": '
            + (call.arguments | tojson) + '}<|eot_id|>' -}}
    {%- elif message.role == 'tool' -%}
        {{- '<|start_header_id|>ipython<|end_header_id|>\n\n' + message.content + '<|eot_id|>' -}}
    {%- else -%}
        {{- '<|start_header_id|>' + message.role + '<|end_header_id|>\n\n' + (message.content | trim) + '<|eot_id|>' -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}{%- endif -%}
"""

MISTRAL_TEMPLATE = r"""
{%- if messages[0].role == 'system' -%}
    {%- set system_message = messages[0].content -%}
    {%- set messages = messages[1:] -%}
{%- endif -%}
{%- set users = messages | selectattr('role', 'equalto', 'user') | list -%}
{{- bos_token -}}
{%- for message in messages -%}
    {%- if message.role == 'user' -%}
        {%- if tools and message == users[-1] -%}
            {{- '[AVAILABLE_TOOLS][' -}}
            {%- for tool in tools -%}{{- (tool | tojson) + (', ' if not loop.last else '') -}}{%- endfor -%}
            {{- '][/AVAILABLE_TOOLS]' -}}
        {%- endif -%}
        {%- if system_message is defined and message == users[-1] -%}
            {{- '[INST]' + system_message + '\n\n' + message.content + '[/INST]' -}}
        {%- else -%}
            {{- '[INST]' + message.content + '[/INST]' -}}
        {%- endif -%}
    {%- elif message.role == 'assistant' and message.tool_calls -%}
        {{- '[TOOL_CALLS][' -}}
        {%- for call in message.tool_calls -%}
            {%- if call.id is not defined or call.id | length != 9 -%}
                {{- raise_exception('Tool call IDs should be alphanumeric strings with length 9!') -}}
            {%- endif -%}
            {{- '{"name": "' + call.function.name + '", "arguments": ' + (call.function.arguments | tojson)
                + ', "id": "' + call.id + '"}' + (', ' if not loop.last else '') -}}
        {%- endfor -%}
        {{- ']' + eos_token -}}
    {%- elif message.role == 'assistant' -%}
        {{- message.content + eos_token -}}
    {%- elif message.role == 'tool' -%}
        {{- '[TOOL_RESULTS]{"content": ' + (message.content | tojson) + ', "call_id": "' + message.tool_call_id
            + '"}[/TOOL_RESULTS]' -}}
    {%- endif -%}
{%- endfor -%}
"""

FAMILIES = {
    "qwen": {
        "template": QWEN_TEMPLATE, "parser": "hermes", "config": "Qwen2Config",
        "special": {"pad_token": "<|endoftext|>", "eos_token": "<|im_end|>"},
        "control": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "added": ["<tool_call>", "</tool_call>"],
    },
    "llama": {
        "template": LLAMA_TEMPLATE, "parser": "llama3_json", "config": "LlamaConfig",
        "special": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "pad_token": "<|finetune_right_pad_id|>"},
        "control": ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                    "<|python_tag|>", "<|finetune_right_pad_id|>"],
        "added": [],
    },
    "mistral": {
        "template": MISTRAL_TEMPLATE, "parser": "mistral", "config": "MistralConfig",
        "special": {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"},
        "control": ["<pad>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                    "[TOOL_CALLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"],
        "added": [],
    },
}


def build_tokenizer(family: str, texts: list[str], vocab: int = 600):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    spec = FAMILIES[family]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=spec["control"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    # Non-special added tokens (Qwen's <tool_call>): one token each, kept when decoding.
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in spec["added"]])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=512, **spec["special"])
    tokenizer.chat_template = spec["template"]
    return tokenizer


def build_model(family: str, out: Path, texts: list[str], *, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A random-weight model of the family's real architecture, saved with its tokenizer in ``out``."""
    import torch
    import transformers

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(family, texts)
    config = getattr(transformers, FAMILIES[family]["config"])(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True)
    model = transformers.AutoModelForCausalLM.from_config(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
