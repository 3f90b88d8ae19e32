// Whether a GPU can run the code of this build. A CUDA binary holds machine code (cubins,
// CMake's "NN-real") and PTX ("NN-virtual"); the driver picks a cubin of the GPU's major
// version and a minor version no higher than the GPU's, else compiles PTX of a version no
// higher than the GPU's. Without either, every kernel launch fails with "no kernel image
// is available", which names neither the GPU nor the fix; cuda/runtime.cu asks this first.
// Pure (no CUDA call), so the rule is tested on machines without a GPU.
#pragma once

#include <string>
#include <vector>

namespace steepest {

struct CudaArch {
  int version = 0;     // 10 * major + minor
  bool real = false;   // machine code (cubin)
  bool ptx = false;    // PTX for the driver to compile
  bool exact = false;  // "90a": arch-specific features, runs on that version only
};

// CMake's CUDA_ARCHITECTURES entries, as the build records them: comma-separated.
inline std::vector<std::string> cuda_arch_entries(const std::string& list) {
  std::vector<std::string> entries;
  for (size_t start = 0; start < list.size();) {
    size_t end = list.find(',', start);
    if (end == std::string::npos) end = list.size();
    if (end > start) entries.push_back(list.substr(start, end - start));
    start = end + 1;
  }
  return entries;
}

// Parses the entries ("75-real", "90-virtual", "86": both, "90a-real"); one that names no
// version ("native", "all") is skipped.
inline std::vector<CudaArch> parse_cuda_archs(const std::string& list) {
  std::vector<CudaArch> archs;
  for (const std::string& entry : cuda_arch_entries(list)) {
    size_t digits = 0;
    while (digits < entry.size() && entry[digits] >= '0' && entry[digits] <= '9') ++digits;
    if (digits < 2 || digits > 4) continue;
    CudaArch arch;
    arch.version = std::stoi(entry.substr(0, digits));
    std::string rest = entry.substr(digits);
    if (!rest.empty() && (rest[0] == 'a' || rest[0] == 'f')) {
      arch.exact = rest[0] == 'a';
      rest = rest.substr(1);
    }
    if (rest.empty()) {
      arch.real = arch.ptx = true;
    } else if (rest == "-real") {
      arch.real = true;
    } else if (rest == "-virtual") {
      arch.ptx = true;
    } else {
      continue;
    }
    archs.push_back(arch);
  }
  return archs;
}

// "" when a GPU of compute capability major.minor runs code built for `list`; else the
// error to raise, naming `device` (e.g. "cuda:0 (Tesla V100-SXM2-16GB)"), its capability
// and what the build has. A list with no version in it ("native") cannot be judged: "".
inline std::string cuda_arch_mismatch(const std::string& device, int major, int minor,
                                      const std::string& list) {
  const std::vector<CudaArch> archs = parse_cuda_archs(list);
  if (archs.empty()) return "";
  const int version = 10 * major + minor;
  std::string cubins, ptx;
  for (const CudaArch& a : archs) {
    const bool same_major = a.version / 10 == major;
    if (a.real && (a.exact ? a.version == version : same_major && a.version <= version))
      return "";
    if (a.ptx && (a.exact ? a.version == version : a.version <= version)) return "";
    const std::string name = std::to_string(a.version) + (a.exact ? "a" : "");
    if (a.real) cubins += (cubins.empty() ? "sm_" : ", sm_") + name;
    if (a.ptx) ptx += (ptx.empty() ? "compute_" : ", compute_") + name;
  }
  std::string has;
  if (!cubins.empty()) has = "machine code for " + cubins;
  if (!ptx.empty()) has += (has.empty() ? "" : " and ") + std::string("PTX for ") + ptx;
  return "[cuda] " + device + " has compute capability " + std::to_string(major) + "." +
         std::to_string(minor) + ", which this build of steepest cannot run: it has " + has +
         ". Rebuild for this GPU, e.g. STEEPEST_CUDA=ON CUDAARCHS=" +
         std::to_string(version) + " pip install . (nvcc 13 builds 7.5 and newer; Volta and "
         "older need CUDA 12)";
}

}  // namespace steepest
