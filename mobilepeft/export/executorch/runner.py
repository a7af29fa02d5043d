"""Generation through ExecuTorch's own ``MultimodalRunner``: the path an app takes with the bundle.

The runner tokenises each text piece itself, runs ``vision_encoder`` on the image tensor we
give it (it does no resizing or normalisation: the manifest's preprocessing is applied here, as
the app applies it), prefills everything, then decodes greedily or by sampling until EOS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mobilepeft.errors import UserError
from mobilepeft.export.bundle import Bundle, read_bundle
from mobilepeft.export.native_output import native_output_captured, tail


def adapter_path(bundle: Bundle, adapter: str | Path | None) -> Path | None:
    """The adapter file a bundle's program runs with, checked against the manifest (None: merged)."""
    from mobilepeft.export.executorch.adapter_data import check_adapter_file

    section = bundle.section("executorch").get("adapter")
    if section is None:
        if adapter is not None:
            raise UserError("this bundle has its adapter merged into the weights; --adapter needs a bundle "
                            "exported with --adapter-as-data", path=bundle.path, field="adapter")
        return None
    path = Path(adapter) if adapter is not None else bundle.file(section["file"])
    if not path.is_file():
        raise UserError("adapter file not found", path=path, field="adapter")
    check_adapter_file(path, section)
    return path


@dataclass
class Generation:
    text: str
    pieces: list[str]  # one decoded piece per generated token, as the runner reports them
    num_generated_tokens: int
    num_prompt_tokens: int
    stats_json: str


class BundleRunner:
    """A ``MultimodalRunner`` over an ExecuTorch bundle, fed by the bundle's prompt template."""

    def __init__(self, bundle: str | Path | Bundle, adapter: str | Path | None = None) -> None:
        """``adapter``: an adapter file to use instead of the bundle's own (an adapter kept as data).

        The Python bindings take a ``.ptd`` only when a program is loaded, so switching adapters
        here means a new runner; the native runner swaps in place (docs/on-device-loop.md).
        """
        from mobilepeft.export.executorch.exporter import load_executorch_kernels
        from mobilepeft.export.executorch.runtime_version import check_runtime_version

        load_executorch_kernels()
        self.bundle = bundle if isinstance(bundle, Bundle) else read_bundle(bundle)
        check_runtime_version(self.bundle)
        section = self.bundle.section("executorch")
        self.adapter = adapter_path(self.bundle, adapter)
        tokenizer = self.bundle.file(self.bundle.manifest["tokenizer"]["file"])
        # ExecuTorch logs tokenizer probing, metadata and CPU detection to fd 2: kept in native_log.
        with native_output_captured(2) as log:
            from executorch.extension.llm.runner import MultimodalRunner  # its tokenizers log on import

            try:
                self.runner = MultimodalRunner(str(self.bundle.file(section["file"])), str(tokenizer),
                                               None if self.adapter is None else str(self.adapter))
            except RuntimeError as exc:
                raise UserError(f"ExecuTorch cannot load the program ({exc}); its log ends: "
                                + " | ".join(tail(log, 5)), path=self.bundle.file(section["file"]),
                                hint="re-export the bundle") from exc
            self.native_log = tail(log, 1000)

    def pixel_values(self, image_path: str | Path):
        from PIL import Image

        from mobilepeft.models.image_processing import preprocess_images

        try:
            with Image.open(image_path) as image:
                return preprocess_images([image], self.bundle.manifest["image_preprocessing"]["size"])
        except OSError as exc:
            raise UserError(f"cannot read the image ({exc})", path=image_path) from exc

    def generate(self, prompt: str, image_path: str | Path | None = None, *, max_new_tokens: int = 64,
                 temperature: float = 0.0) -> Generation:
        """Answer ``prompt`` (about the image, if given) in a fresh conversation."""
        from executorch.extension.llm.runner import GenerationConfig, make_image_input, make_text_input

        spec = self.bundle.manifest["prompt"]
        placeholder = spec["image_placeholder"]
        question = prompt.replace(placeholder, "").strip()
        if image_path is not None:
            question = f"{placeholder}\n{question}"
        text = spec["first_turn"].format(system=spec["system"], question=question)
        inputs = []
        for i, piece in enumerate(text.split(placeholder)):
            if i:
                inputs.append(make_image_input(self.pixel_values(image_path)))
            if piece:
                inputs.append(make_text_input(piece))
        pieces: list[str] = []
        stats = []
        # The runner's budget covers one token fewer than it is given (measured on 1.5.1).
        config = GenerationConfig(echo=False, max_new_tokens=max_new_tokens + 1, temperature=temperature, num_bos=1)
        self.runner.reset()
        # The runner prints every token to fd 1 and its stats to fd 2.
        with native_output_captured(1), native_output_captured(2) as log:
            self.runner.generate(inputs, config, token_callback=pieces.append, stats_callback=stats.append)
            self.native_log += tail(log, 1000)
        generated = stats[-1].num_generated_tokens if stats else len(pieces)
        # The runner hands over the EOS piece too before it stops (and counts it when it is the
        # very first token); it is not part of the answer.
        tokens = pieces[:generated] if len(pieces) > generated else pieces
        answer = "".join(tokens).strip().removesuffix(spec["stop"]).strip()
        return Generation(answer, tokens, generated, stats[-1].num_prompt_tokens if stats else 0,
                          stats[-1].to_json_string() if stats else "{}")
