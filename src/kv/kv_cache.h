// The paged KV cache of one model: per layer a K and a V pool of pages, all
// pages handed out by one page manager (a page id is valid in every layer).
#pragma once

#include <vector>

#include "backend/backend.h"
#include "kv/page_manager.h"

namespace philora::kv {

struct KvCache {
  std::vector<KvLayer> layers;  // [num_layers]
  // Tensor parallelism: ranks 1 .. N-1's own pools, [N - 1][num_layers],
  // each (num_pages, the rank's kv heads, page_size, head_dim) on the rank's
  // backend (model::TensorParallelPhi3::make_kv_cache); a page id means the
  // same page on every rank. Empty with one rank.
  std::vector<std::vector<KvLayer>> peer_layers;
  int64_t page_size = 16;
  PageManager pages;

  KvCache(Backend& backend, int64_t num_layers, int64_t num_pages, int64_t page_size,
          int64_t n_kv_heads, int64_t head_dim)
      : page_size(page_size), pages(int32_t(num_pages), int32_t(page_size)) {
    for (int64_t l = 0; l < num_layers; ++l) {
      const DType t = backend.compute_dtype();
      layers.push_back({backend.alloc(t, {num_pages, n_kv_heads, page_size, head_dim}),
                        backend.alloc(t, {num_pages, n_kv_heads, page_size, head_dim})});
    }
  }
};

}  // namespace philora::kv
