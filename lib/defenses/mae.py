"""The masked-autoencoder parts DIR and IMPure share: patch embedding, 2-D sine-cosine position embeddings,
timm ViT blocks, mask tokens, the pixel head and unpatchify (He et al., "Masked Autoencoders Are Scalable
Vision Learners", CVPR 2022, the architecture both papers build on).

`MaskedAutoencoder` owns the modules and two steps every MAE-style purifier runs:
- `encode(x, index)`: embed the image's patches, keep the patches listed in `index` (each row of the batch its
  own subset, all of one length) and run them through the encoder, alone: an encoded patch sees only the
  patches of its own row;
- `decode(seq, index)`: put those features back at their positions in a full sequence of mask tokens, add the
  decoder's position embedding, run the decoder, and return pixel patches for every position;
- `decode_masked(seq, visible, masked)`: the same pass when only the masked positions' patches are wanted
  (IMPure): the tokens go in as [visible features, mask tokens] (attention without a mask does not depend on
  the order of the tokens, the position embedding says where each one is) and the last decoder block runs its
  queries, MLP and the pixel head on the mask tokens alone.
How the subsets are chosen and how the decoded patches are combined is each paper's own (DIR: K masks and
their mean; IMPure: S disjoint subsets, each reconstructed from the others). The attribute names are DIR's
original ones, so DIR's cached checkpoints load unchanged.
"""
from __future__ import annotations

import torch
from timm.layers import PatchEmbed, build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import nn
from torch.nn import functional as F

from lib.core.purifiers import Purifier
from lib.core.settings import check_images


class MaskedAutoencoder(Purifier):
    """ViT encoder and decoder over a grid of (image_size / patch_size)² patches; see the module docstring."""

    def __init__(self, channels: int = 3, image_size: int = 32, patch_size: int = 2, dim: int = 192, depth: int = 8,
                 heads: int = 3, decoder_dim: int = 192, decoder_depth: int = 2, decoder_heads: int = 3,
                 mlp_ratio: float = 4.0, seed: int = 0):
        super().__init__(seed)
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}.")
        if dim % 4 or decoder_dim % 4:
            raise ValueError(f"The 2-D sine-cosine position embedding needs widths divisible by 4; got dim={dim}, "
                             f"decoder_dim={decoder_dim}.")
        self.channels, self.image_size, self.patch_size = channels, image_size, patch_size
        self.grid = image_size // patch_size
        self.n_patches = self.grid ** 2

    def build(self, dim: int, depth: int, heads: int, decoder_dim: int, decoder_depth: int, decoder_heads: int,
              mlp_ratio: float) -> None:
        """Create the modules (a separate step so a subclass can check its own arguments first: the order of
        construction fixes the random initialisation)."""
        self.patch_embed = PatchEmbed(self.image_size, self.patch_size, self.channels, dim)
        self.register_buffer("pos_embed", build_sincos2d_pos_embed([self.grid, self.grid], dim)[None], persistent=False)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, qkv_bias=True) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer("decoder_pos_embed",
                             build_sincos2d_pos_embed([self.grid, self.grid], decoder_dim)[None], persistent=False)
        self.decoder_blocks = nn.ModuleList(Block(decoder_dim, decoder_heads, mlp_ratio, qkv_bias=True)
                                            for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.head = nn.Linear(decoder_dim, self.patch_size ** 2 * self.channels)
        self._init_weights()

    def _init_weights(self) -> None:
        """MAE's initialisation (Xavier-uniform linears and patch projection, zero biases, N(0, 0.02) mask token),
        except the pixel head, which starts at zero."""
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # the pixel head starts at zero (every pixel 0.5): with the few hundred SGD steps of the small scales a
        # random head spends them undoing its own noise (initial MSE ~1.6 instead of ~0.07)
        nn.init.zeros_(self.head.weight)

    def check_input(self, x: torch.Tensor, name: str) -> None:
        check_images(x, "x")
        if x.shape[1] != self.channels or x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"This {name} takes ({self.channels}, {self.image_size}, {self.image_size}) "
                             f"images; got {tuple(x.shape[1:])}.")

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, L, p²·C) -> (B, C, H, W)."""
        b, p, g, c = len(patches), self.patch_size, self.grid, self.channels
        return patches.view(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, g * p, g * p)

    def patch_pixels(self, keep: torch.Tensor) -> torch.Tensor:
        """Patch masks (..., L) -> pixel masks (..., 1, H, W) float, 1 where `keep` is true."""
        lead = keep.shape[:-1]
        grid = keep.reshape(*lead, 1, self.grid, self.grid).float()
        return grid.repeat_interleave(self.patch_size, -2).repeat_interleave(self.patch_size, -1)

    def encode(self, x: torch.Tensor, index: torch.Tensor, repeats: int = 1) -> torch.Tensor:
        """Encoder features of the patches `index` (B, V) of each row, B = len(x)·repeats (image i at rows
        i·repeats … i·repeats + repeats − 1): (B, V, decoder_dim). Each row is encoded alone."""
        tokens = self.patch_embed(x - 0.5) + self.pos_embed  # (N, L, D)
        # one gather of image i's rows i·repeats … side by side, then split back into rows: no repeated copy
        wide = index.reshape(len(x), -1)[..., None].expand(-1, -1, tokens.shape[-1])
        seq = tokens.gather(1, wide).view(len(index), index.shape[1], -1)
        for block in self.blocks:
            seq = block(seq)
        return self.decoder_embed(self.norm(seq))

    def decode(self, seq: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Pixel patches of every position, (B, L, p²·C) around 0.5, from features `seq` (B, V, ·) placed at
        positions `index` (B, V) and mask tokens everywhere else."""
        full = self.mask_token.expand(len(seq), self.n_patches, -1).clone()
        full = full.scatter(1, index[..., None].expand(-1, -1, full.shape[-1]), seq)
        full = full + self.decoder_pos_embed
        for block in self.decoder_blocks:
            full = block(full)
        return self.head(self.decoder_norm(full)) + 0.5

    def decode_masked(self, seq: torch.Tensor, visible: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """Pixel patches (B, M, p²·C) at positions `masked` (B, M), from features `seq` (B, V, ·) at positions
        `visible` (B, V), where visible and masked together are all L positions: `decode(seq, visible)` at the
        masked positions, up to float rounding, at about a third of the decoder's cost."""
        if visible.shape[1] + masked.shape[1] != self.n_patches:
            raise ValueError(f"visible ({visible.shape[1]}) and masked ({masked.shape[1]}) positions must together "
                             f"be all {self.n_patches} patches.")
        pos = self.decoder_pos_embed[0]
        tokens = torch.cat([seq + pos[visible], self.mask_token + pos[masked]], 1)
        for block in self.decoder_blocks[:-1]:
            tokens = block(tokens)
        if len(self.decoder_blocks):
            out = block_queries(self.decoder_blocks[-1], tokens, masked.shape[1])
        else:
            out = tokens[:, -masked.shape[1]:]
        return self.head(self.decoder_norm(out)) + 0.5


def block_queries(block: Block, x: torch.Tensor, m: int) -> torch.Tensor:
    """timm `Block(x)[:, -m:]` without computing the other rows: the last m tokens attend to all of x (keys and
    values from every token, queries from those m), then the residual MLP on the m rows alone."""
    attn, (b, n, _) = block.attn, x.shape
    h = block.norm1(x)
    w, bias = attn.qkv.weight, attn.qkv.bias
    a = attn.attn_dim
    q = F.linear(h[:, -m:], w[:a], None if bias is None else bias[:a])
    kv = F.linear(h, w[a:], None if bias is None else bias[a:])
    q = q.view(b, m, attn.num_heads, attn.head_dim).transpose(1, 2)
    k, v = kv.view(b, n, 2, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    out = attn.norm(out.transpose(1, 2).reshape(b, m, a))
    if attn.gate is not None:
        out = out * attn.gate(h[:, -m:]).sigmoid()
    rows = x[:, -m:] + block.drop_path1(block.ls1(attn.proj_drop(attn.proj(out))))
    return rows + block.drop_path2(block.ls2(block.mlp(block.norm2(rows))))
