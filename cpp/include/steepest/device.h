// Where a tensor's memory lives. Op code compares devices; kernels are chosen from them.
#pragma once

#include <string>
#include <string_view>

namespace steepest {

enum class DeviceType : uint8_t { CPU, CUDA };

struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;

  bool is_cpu() const { return type == DeviceType::CPU; }
  bool is_cuda() const { return type == DeviceType::CUDA; }
  bool operator==(const Device& o) const { return type == o.type && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string str() const;
};

Device parse_device(std::string_view text);

}  // namespace steepest
