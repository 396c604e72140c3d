#include "engine/sampler.h"

namespace philora::engine {

float draw_uniform(std::mt19937_64& rng) { return float(rng() >> 40) * 0x1p-24f; }

}  // namespace philora::engine
