// An op's argument list written once. Each op front file lists its arguments in schema order as an
// X-macro of (type, name) pairs; from that one list come the schema string, the struct the front
// function receives, and the unpacking of a boxed call (the kernel is registered boxed, so no C++
// signature repeats the list):
//
//   #define MY_OP_ARGS(X) X(Tensor, x) X(OptTensor, weight) X(Int, size)
//   HALD_DEFINE_OP_ARGS(MyOpArgs, MY_OP_ARGS)
//   m.def(MyOpArgs::schema("my_op", "Tensor").c_str());
//   m.impl("my_op", torch::CppFunction::makeFromBoxedFunction<&my_op_boxed>());
//   void my_op_boxed(const c10::OperatorHandle&, torch::jit::Stack* s) {
//     const MyOpArgs a = MyOpArgs::pop(*s);  ...  torch::jit::push(*s, out); }
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>
#include <ATen/core/stack.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <initializer_list>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

// Schema spelling of each argument type.
#define HALD_SCHEMA_Tensor "Tensor"
#define HALD_SCHEMA_OptTensor "Tensor?"
#define HALD_SCHEMA_Int "int"
#define HALD_SCHEMA_Float "float"
#define HALD_SCHEMA_Floats "float[]"
#define HALD_SCHEMA_Bool "bool"
#define HALD_SCHEMA_ScalarType "ScalarType"
#define HALD_SCHEMA_Str "str"

namespace hald {
namespace op_args {

// C++ type of each argument type.
using Tensor = at::Tensor;
using OptTensor = std::optional<at::Tensor>;
using Int = int64_t;
using Float = double;
using Floats = std::vector<double>;
using Bool = bool;
using ScalarType = c10::ScalarType;
using Str = std::string;

inline void unpack(const c10::IValue& v, Tensor& out) { out = v.toTensor(); }
inline void unpack(const c10::IValue& v, OptTensor& out) {
  out = v.isNone() ? std::nullopt : std::optional<at::Tensor>(v.toTensor());
}
inline void unpack(const c10::IValue& v, Int& out) { out = v.toInt(); }
inline void unpack(const c10::IValue& v, Float& out) { out = v.toDouble(); }
inline void unpack(const c10::IValue& v, Floats& out) { out = v.toDoubleVector(); }
inline void unpack(const c10::IValue& v, Bool& out) { out = v.toBool(); }
inline void unpack(const c10::IValue& v, ScalarType& out) { out = v.toScalarType(); }
inline void unpack(const c10::IValue& v, Str& out) { out = v.toStringRef(); }

}  // namespace op_args

inline std::string op_schema(const char* name, std::initializer_list<const char*> args, const char* returns) {
  std::string s = std::string(name) + "(";
  const char* sep = "";
  for (const char* a : args) {
    s += sep;
    s += a;
    sep = ", ";
  }
  return s + ") -> " + returns;
}

}  // namespace hald

#define HALD_OP_FIELD(type, name) ::hald::op_args::type name;
#define HALD_OP_COUNT(type, name) +1
#define HALD_OP_SCHEMA_ARG(type, name) HALD_SCHEMA_##type " " #name,
#define HALD_OP_UNPACK(type, name) ::hald::op_args::unpack(stack[i++], a.name);

// struct NAME { one field per argument; count; schema(op, returns); pop(stack) }.
#define HALD_DEFINE_OP_ARGS(NAME, LIST)                                        \
  struct NAME {                                                              \
    LIST(HALD_OP_FIELD)                                                      \
    static constexpr size_t count = 0 LIST(HALD_OP_COUNT);                   \
    static std::string schema(const char* op, const char* returns) {         \
      return ::hald::op_schema(op, {LIST(HALD_OP_SCHEMA_ARG)}, returns);     \
    }                                                                        \
    /* Takes the arguments of a boxed call off the stack. */                 \
    static NAME pop(torch::jit::Stack& stack) {                              \
      NAME a;                                                                \
      size_t i = stack.size() - count;                                       \
      LIST(HALD_OP_UNPACK)                                                   \
      torch::jit::drop(stack, count);                                        \
      return a;                                                              \
    }                                                                        \
  };

#ifndef HALD_WITH_CUDA
#define HALD_WITH_CUDA 0
#endif
// The CUDA kernel of an op, or nullptr in a build without CUDA kernels.
#if HALD_WITH_CUDA
#define HALD_CUDA_KERNEL(fn) &fn
#else
#define HALD_CUDA_KERNEL(fn) nullptr
#endif

namespace hald {

// Runs the kernel of `device` (ATen's DispatchStub, reduced to the two backends this library has).
template <typename CpuFn, typename CudaFn, typename... Args>
void call_device_kernel(const char* op, const c10::Device& device, CpuFn cpu, CudaFn cuda, Args&... args) {
  if (device.is_cpu()) {
    cpu(args...);
    return;
  }
  TORCH_CHECK(device.is_cuda(), op, "no kernel for tensors on ", device);
  if constexpr (std::is_same_v<CudaFn, std::nullptr_t>) {
    TORCH_CHECK(false, op, "this build of hald_ext has no CUDA kernels (rebuild with CUDA)");
  } else {
    cuda(args...);
  }
}

}  // namespace hald
