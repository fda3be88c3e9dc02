// One way to build an op (torchvision's):
//   csrc/ops/<op>.h           the op's argument list, written once as an X-macro of (type, name) pairs in
//                             schema order, and the declarations of the shared checks;
//   csrc/ops/<op>.cpp         the schema (TORCH_LIBRARY_FRAGMENT) and the checks every backend runs;
//   csrc/ops/cpu/<op>_kernel.cpp, csrc/ops/cuda/<op>_kernel.cu
//                             each ends with TORCH_LIBRARY_IMPL(hald, CPU / CUDA, m) registering its
//                             own kernel, so the dispatcher picks the backend (no branching at run time).
// From the one list come the schema string, the struct the kernels receive, and the unpacking of a
// boxed call (kernels are registered boxed, so no C++ signature repeats the list):
//
//   #define MY_OP_ARGS(X) X(Tensor, x) X(OptTensor, weight) X(Int, size)
//   HALD_DEFINE_OP_ARGS(MyOpArgs, MY_OP_ARGS)                          // <op>.h
//   m.def(MyOpArgs::schema("my_op", "Tensor").c_str());               // <op>.cpp
//   at::Tensor my_op_cpu(const MyOpArgs& a) { check_my_op(a); ... }   // cpu/<op>_kernel.cpp
//   TORCH_LIBRARY_IMPL(hald, CPU, m) { HALD_IMPL_BOXED(m, "my_op", MyOpArgs, hald::my_op_cpu); }
//
// A kernel function returns an at::Tensor or a std::tuple of them (the schema's returns, in order).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>
#include <ATen/core/stack.h>
#include <torch/library.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <initializer_list>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
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
#define HALD_SCHEMA_OptTensorDefaultNone "Tensor?"
#define HALD_SCHEMA_IntDefaultMinus1 "int"
#define HALD_SCHEMA_IntsDefaultEmpty "int[]"

// Default value of each argument type in the schema: none, except the *Default* types (arguments added
// to an existing op, last, so calls written before them need not pass them).
#define HALD_DEFAULT_Tensor ""
#define HALD_DEFAULT_OptTensor ""
#define HALD_DEFAULT_Int ""
#define HALD_DEFAULT_Float ""
#define HALD_DEFAULT_Floats ""
#define HALD_DEFAULT_Bool ""
#define HALD_DEFAULT_ScalarType ""
#define HALD_DEFAULT_Str ""
#define HALD_DEFAULT_OptTensorDefaultNone "=None"
#define HALD_DEFAULT_IntDefaultMinus1 "=-1"
#define HALD_DEFAULT_IntsDefaultEmpty "=[]"

namespace hald {
namespace op_args {

// C++ type of each argument type.
using Tensor = at::Tensor;
using OptTensor = std::optional<at::Tensor>;
using OptTensorDefaultNone = OptTensor;
using IntDefaultMinus1 = int64_t;
using IntsDefaultEmpty = std::vector<int64_t>;
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
inline void unpack(const c10::IValue& v, IntsDefaultEmpty& out) { out = v.toIntVector(); }
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
#define HALD_OP_SCHEMA_ARG(type, name) HALD_SCHEMA_##type " " #name HALD_DEFAULT_##type,
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

namespace hald {

inline void push_results(torch::jit::Stack& stack, at::Tensor t) { torch::jit::push(stack, std::move(t)); }

template <typename... Ts>
void push_results(torch::jit::Stack& stack, std::tuple<Ts...> ts) {
  std::apply([&](auto&... t) { torch::jit::push(stack, std::move(t)...); }, ts);
}

// The boxed kernel of one backend: takes the op's arguments off the stack, runs `Fn`, pushes its results.
template <typename OpArgs, auto Fn>
void boxed_kernel(const c10::OperatorHandle&, torch::jit::Stack* stack) {
  push_results(*stack, Fn(OpArgs::pop(*stack)));
}

}  // namespace hald

// Registers FN (a function of ARGS returning the op's results) as OP's kernel in TORCH_LIBRARY_IMPL's `m`.
#define HALD_IMPL_BOXED(m, OP, ARGS, FN) \
  (m).impl(OP, torch::CppFunction::makeFromBoxedFunction<&::hald::boxed_kernel<ARGS, &FN>>())
