#include "engine/request.h"

namespace philora::engine {

std::string_view name(FinishReason r) {
  switch (r) {
    case FinishReason::none:
      return "none";
    case FinishReason::length:
      return "length";
    case FinishReason::eos:
      return "eos";
    case FinishReason::stop_sequence:
      return "stop_sequence";
    case FinishReason::abort:
      return "abort";
    case FinishReason::invalid_request:
      return "invalid_request";
    case FinishReason::unknown_adapter:
      return "unknown_adapter";
    case FinishReason::adapter_invalid:
      return "adapter_invalid";
    case FinishReason::no_adapter_slot:
      return "no_adapter_slot";
    case FinishReason::device_error:
      return "device_error";
  }
  return "unknown";
}

}  // namespace philora::engine
