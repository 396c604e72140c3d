#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into tests/fuzz/corpus/NAME/.

The seeds are small valid inputs (libFuzzer mutates from them); rerun after
changing this file. Standard library only. Files named regression_* are inputs
a fuzzer once failed on, kept as they were found (this script leaves them)."""
import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def safetensors(tensors, metadata=None):
    """tensors: [(name, dtype, shape, bytes)] -> a safetensors file."""
    header, data = {}, b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def main():
    put("fuzz_safetensors", "two_tensors", safetensors(
        [("w", "F32", [2, 3], struct.pack("<6f", *range(6))),
         ("b", "BF16", [4], b"\x80\x3f" * 4)]))
    put("fuzz_safetensors", "metadata_scalar", safetensors(
        [("s", "F16", [], b"\x00\x3c"), ("e", "I64", [0], b"")], {"format": "pt"}))
    put("fuzz_safetensors", "nd", safetensors(
        [("x", "U8", [1, 2, 2, 2], bytes(range(8))), ("y", "I32", [1], b"\x01\x00\x00\x00")]))

    # A SentencePiece-style tokenizer (Metaspace, byte fallback) and a byte-level BPE.
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "\u2581": 3}
    for c in "abcdehlorw":
        vocab[c] = len(vocab)
    for b in range(256):
        vocab["<0x%02X>" % b] = len(vocab)
    vocab["\u2581h"] = len(vocab)
    vocab["\u2581he"] = len(vocab)
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for t, i in [("<unk>", 0), ("<s>", 1), ("</s>", 2)]]
    sp = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
          "normalizer": {"type": "Sequence", "normalizers": [
              {"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace", "pattern": {"String": " "},
                                                         "content": "\u2581"}]},
          "pre_tokenizer": None,
          "post_processor": {"type": "TemplateProcessing",
                             "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                        {"Sequence": {"id": "A", "type_id": 0}}],
                             "pair": [{"Sequence": {"id": "A", "type_id": 0}},
                                      {"Sequence": {"id": "B", "type_id": 1}}],
                             "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
          "decoder": {"type": "Sequence", "decoders": [
              {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
              {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1,
                                                           "stop": 0}]},
          "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                    "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True,
                    "vocab": vocab, "merges": ["\u2581 h", "\u2581h e"]}}
    put("fuzz_tokenizer_json", "sentencepiece_bpe", json.dumps(sp, ensure_ascii=False))

    byte_vocab = {}
    # GPT-2's printable byte alphabet.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    for c in cs:
        byte_vocab[chr(c)] = len(byte_vocab)
    for m in ["\u0120t", "h e", "\u0120th"]:
        byte_vocab[m.replace(" ", "")] = len(byte_vocab)
    bl = {"version": "1.0", "truncation": None, "padding": None,
          "added_tokens": [{"id": len(byte_vocab), "content": "<|end|>", "single_word": False,
                            "lstrip": False, "rstrip": True, "normalized": False, "special": True}],
          "normalizer": {"type": "NFC"},
          "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
              {"type": "Split", "pattern": {"Regex": "'s|'t| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+"},
               "behavior": "Isolated", "invert": False},
              {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
          "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                             "use_regex": True},
          "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
          "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                    "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
                    "ignore_merges": True, "vocab": byte_vocab, "merges": [["\u0120", "t"], ["h", "e"],
                                                                           ["\u0120t", "h"]]}}
    put("fuzz_tokenizer_json", "byte_level_bpe", json.dumps(bl, ensure_ascii=False))

    for i, text in enumerate(["Hello, world!", "  leading spaces\tand\ttabs\n\n",
                              "caf\u00e9 na\u00efve \u65e5\u672c\u8a9e \U0001F600 123456789",
                              "<|user|>\nWhat does zeal mean?<|end|>\n<|assistant|>\n"]):
        put("fuzz_tokenize", "text%d" % i, text)

    templates = os.path.join(ROOT, "tests", "data", "tokenizer", "chat", "templates")
    for name in sorted(os.listdir(templates)):
        with open(os.path.join(templates, name), "rb") as f:
            put("fuzz_chat_template", name, f.read())

    def req(selector, body):
        return bytes([selector]) + json.dumps(body).encode()

    put("fuzz_request_json", "lorax", req(0, {"inputs": "What is love?", "parameters": {
        "max_new_tokens": 20, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "seed": 7, "stop": ["\n"],
        "repetition_penalty": 1.1, "details": True, "decoder_input_details": True, "adapter_id": "kjv",
        "do_sample": True, "truncate": 10, "return_full_text": False, "top_n_tokens": 3}}))
    put("fuzz_request_json", "lorax_ids", req(0, {"inputs": [1, 2, 3], "parameters": {"ignore_eos_token": True}}))
    put("fuzz_request_json", "compat_stream", req(1, {"inputs": "x", "stream": True,
                                                      "parameters": {"best_of": 1, "typical_p": 0.5}}))
    put("fuzz_request_json", "completions", req(2, {"model": "kjv", "prompt": "In the beginning",
        "max_tokens": 8, "logprobs": 2, "echo": True, "stop": ["."], "presence_penalty": 0.5,
        "frequency_penalty": 0.1, "logit_bias": {"42": -100}, "seed": 3, "n": 1, "stream": True,
        "stream_options": {"include_usage": True}}))
    put("fuzz_request_json", "completions_ids", req(2, {"model": "philora-tiny", "prompt": [[5, 6, 7]]}))
    put("fuzz_request_json", "chat", req(3, {"model": "devil", "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Define zeal."}],
        "max_completion_tokens": 16, "logprobs": True, "top_logprobs": 2, "min_p": 0.05,
        "temperature": 0}))
    put("fuzz_request_json", "chat_parts", req(3, {"messages": [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]}]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
