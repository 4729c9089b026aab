/// \file
/// \brief The building blocks of a GPT-2-style decoder on the CPU, llm.c style: free
/// `x_forward` / `x_backward` functions on row-major Eigen matrices (float or double), each
/// forward saving what its backward needs. One header per layer family; this one includes them
/// all.
///
/// Contract, stated again on every function: forwards WRITE their outputs; parameter gradients
/// ACCUMULATE (+=) until the caller zeroes them; activation gradients are WRITTEN, except where
/// the input sits on the residual stream (layernorm_backward's dX, residual_backward), which
/// accumulate. Shapes follow methods.md: token matrices [n x d] with n = B*T. The element type is
/// explicit at the call (`layernorm_forward<T>(...)`), so Eigen maps and blocks bind to the
/// `Ref` parameters without copies.
#pragma once

#include "loralab/model/attention.hpp"
#include "loralab/model/embedding.hpp"
#include "loralab/model/gelu.hpp"
#include "loralab/model/layernorm.hpp"
#include "loralab/model/loss.hpp"
#include "loralab/model/residual.hpp"
