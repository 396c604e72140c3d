// A safetensors file of arbitrary bytes: SafetensorsFile::open either refuses
// it with a message or returns views that lie inside the mapping, each the
// size its dtype and shape say (read through to the last byte).
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const int fd = memfd_create("safetensors", MFD_CLOEXEC);
  if (fd < 0) std::abort();
  for (size_t done = 0; done < size;) {
    const ssize_t n = write(fd, data + done, size - done);
    if (n <= 0) std::abort();
    done += size_t(n);
  }
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  auto file = philora::io::SafetensorsFile::open(path);
  if (file.ok()) {
    uint8_t sum = 0;
    for (const auto& [name, entry] : (*file)->tensors()) {
      const philora::Tensor& t = entry.view;
      const auto* bytes = static_cast<const uint8_t*>(t.data);
      for (size_t i = 0; i < t.nbytes(); ++i) sum = uint8_t(sum + bytes[i]);
    }
    volatile uint8_t keep = sum;
    (void)keep;
  } else if (file.status().message().empty()) {
    std::abort();  // a refusal always says why
  }
  close(fd);
  return 0;
}
