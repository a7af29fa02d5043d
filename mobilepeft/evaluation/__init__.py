"""Answer-level evaluation: ``mobilepeft eval`` on LLaVA-format and VQA-style question sets."""
