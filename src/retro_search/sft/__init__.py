"""The SFT stage: fine-tune a student on (original or Retro-Searched) traces.

- `data`: trace records -> TRL prompt-completion rows in the student's chat format
  (`retro-search sft-data`).
- `train`: TRL SFTTrainer with the loss on the completion, resumable checkpoints, atomic final
  save (`retro-search sft`; multi-GPU under `accelerate launch`, see `train`'s docstring).
- `config`: the `student` and `sft` config sections.

Importing this package stays light: torch, transformers and TRL load inside the functions.
"""

from retro_search.sft.config import SFTSettings, ModelSettings, load_settings

__all__ = ["SFTSettings", "ModelSettings", "load_settings"]
