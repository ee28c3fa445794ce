"""A tiny text classifier (the model file of an archive for the default text_classifier),
called as TorchServe calls it, `model(token_ids, offsets)`, with the `embedding` layer its
explanations attribute to."""

import torch


class TinyTextBag(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.EmbeddingBag(16, 4, mode="mean")
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, text, offsets):
        return self.fc(self.embedding(text, offsets))
