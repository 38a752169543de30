// Placeholder until the vectorised path lands: the reference.
#include "attend-kernels.h"

namespace smartkv {

bool fast_path_available(int) { return false; }

void attend_block_fast(const block_layout& layout, quant_mode mode, const block_ref& blk, int head,
                       const head_query& q, head_state& st, const score_sink& sink, float* scratch) {
    attend_block_ref(layout, mode, blk, head, q, st, sink, scratch);
}

}  // namespace smartkv
