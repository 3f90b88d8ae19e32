"""The op-check table: every differentiable op, the backward nodes that carry its formula
(the names its grad_fn reports; an empty list for a composite, whose backward is the chain
rule through the ops it is written with) and the test functions that check it with
check_op (float64 gradcheck, torch parity, non-contiguous inputs).

tools/check_registry.py (run by tests/test_registry.py) reads this file without running
any test, and fails CI when a kernel of kernels.def lacks a CPU or CUDA definition, when a
backward node or an op of st.ops has no entry here, or when an entry names a node or test
that does not exist.

Adding an op: one line in OPS, `"name": {"nodes": [...], "tests": ["test_file.py::test_fn"]}`.
The functions of the unary table (cpp/include/steepest/unary_ops.def) need none: the check
gives each its node and test_elementwise.py::test_unary, and requires a row in that test's
UNARY table; an entry here only adds further tests.
Pure data: no imports.
"""

OPS = {
    # Arithmetic (cpp/ops/elementwise.cpp; scalar operands record the *Scalar nodes).
    "add": {"nodes": ["AddBackward", "AddScalarBackward"],
            "tests": ["test_elementwise.py::test_binary_broadcast", "test_elementwise.py::test_binary_noncontiguous",
                      "test_elementwise.py::test_binary_noncontiguous_broadcast",
                      "test_elementwise.py::test_python_scalar_operand_gradients",
                      "test_elementwise.py::test_operators"]},
    "sub": {"nodes": ["AddBackward"], "tests": ["test_elementwise.py::test_binary_broadcast"]},
    "mul": {"nodes": ["MulBackward", "MulScalarBackward"],
            "tests": ["test_elementwise.py::test_binary_broadcast", "test_elementwise.py::test_binary_same_tensor_twice"]},
    "div": {"nodes": ["DivBackward"], "tests": ["test_elementwise.py::test_binary_broadcast"]},
    "neg": {"nodes": ["NegBackward"],
            "tests": ["test_elementwise.py::test_unary", "test_elementwise.py::test_methods_and_unary_operators"]},
    "exp": {"nodes": ["ExpBackward"],
            "tests": ["test_elementwise.py::test_unary", "test_elementwise.py::test_unary_wide_range",
                      "test_tensor_autograd.py::test_diamond_graph_against_torch"]},
    "power": {"nodes": ["PowScalarBackward"],
              "tests": ["test_elementwise.py::test_power", "test_elementwise.py::test_power_noncontiguous"]},
    "pow": {"nodes": ["PowBackward"],
            "tests": ["test_everyday_ops.py::test_pow_tensor_exponent",
                      "test_everyday_ops.py::test_scalar_base_and_scalar_exponent"]},
    "clamp_min": {"nodes": ["ClampMinBackward"], "tests": ["test_elementwise.py::test_clamp_min"]},
    "clamp": {"nodes": ["ClipBackward"], "tests": ["test_everyday_ops.py::test_clip_scalar_bounds"]},
    "clip": {"nodes": ["ClipBackward"],
             "tests": ["test_everyday_ops.py::test_clip_scalar_bounds", "test_everyday_ops.py::test_clip_tensor_bounds"]},
    "maximum": {"nodes": ["MaximumBackward"],
                "tests": ["test_everyday_ops.py::test_maximum_minimum",
                          "test_everyday_ops.py::test_maximum_minimum_noncontiguous"]},
    "minimum": {"nodes": ["MinimumBackward"], "tests": ["test_everyday_ops.py::test_maximum_minimum"]},
    "where": {"nodes": ["WhereBackward"],
              "tests": ["test_everyday_ops.py::test_where", "test_everyday_ops.py::test_where_noncontiguous_and_scalars"]},
    # Activations (cpp/ops/pointwise.cpp).
    "erf": {"nodes": ["ErfBackward"], "tests": ["test_everyday_ops.py::test_activation"]},
    "silu": {"nodes": ["SiluBackward"], "tests": ["test_everyday_ops.py::test_activation"]},
    "softplus": {"nodes": ["SoftplusBackward"], "tests": ["test_everyday_ops.py::test_activation"]},
    "elu": {"nodes": ["EluBackward"], "tests": ["test_everyday_ops.py::test_activation"]},
    "leaky_relu": {"nodes": ["LeakyReluBackward"], "tests": ["test_everyday_ops.py::test_activation"]},
    # Reductions and scans (cpp/ops/reduce.cpp, scan.cpp).
    "sum": {"nodes": ["SumBackward"],
            "tests": ["test_reductions.py::test_reduction", "test_reductions.py::test_reduction_method",
                      "test_reductions.py::test_reduction_defaults_reduce_everything",
                      "test_reductions.py::test_reduction_noncontiguous", "test_reductions.py::test_reduction_size_one_dims"]},
    "mean": {"nodes": ["SumBackward"], "tests": ["test_reductions.py::test_reduction"]},
    "max": {"nodes": ["MaxBackward"], "tests": ["test_reductions.py::test_reduction"]},
    "min": {"nodes": ["MaxBackward", "NegBackward"], "tests": ["test_everyday_ops.py::test_min"]},
    "sum_to": {"nodes": ["SumBackward"], "tests": ["test_layers_extra.py::test_add_sums_and_backpropagates"]},
    "logsumexp": {"nodes": ["LogSumExpBackward"],
                  "tests": ["test_everyday_ops.py::test_logsumexp",
                            "test_everyday_ops.py::test_logsumexp_is_shifted_and_noncontiguous"]},
    "var": {"nodes": ["VarBackward"],
            "tests": ["test_everyday_ops.py::test_var_std", "test_everyday_ops.py::test_var_std_torch_keywords_and_noncontiguous"]},
    "std": {"nodes": ["StdBackward"], "tests": ["test_everyday_ops.py::test_var_std"]},
    "prod": {"nodes": ["ProdBackward"],
             "tests": ["test_everyday_ops.py::test_prod", "test_everyday_ops.py::test_prod_gradient_with_zeros",
                      "test_everyday_ops.py::test_prod_second_order_with_zeros"]},
    "cumsum": {"nodes": ["CumsumBackward"], "tests": ["test_everyday_ops.py::test_cumsum"]},
    # Linear algebra (cpp/ops/linalg.cpp).
    "matmul": {"nodes": ["MatmulBackward"],
               "tests": ["test_matmul_linear.py::test_matmul", "test_matmul_linear.py::test_matmul_operator",
                         "test_matmul_linear.py::test_matmul_single_grad_input"]},
    "linear": {"nodes": ["MatmulBackward", "AddBackward"],
               "tests": ["test_matmul_linear.py::test_linear", "test_matmul_linear.py::test_linear_without_bias",
                         "test_linear_bias.py::test_linear_bias_gradients"]},
    # Neural-network ops (cpp/ops/nn.cpp, attention.cpp).
    "softmax": {"nodes": ["SoftmaxBackward"],
                "tests": ["test_softmax_losses.py::test_softmax", "test_softmax_losses.py::test_softmax_default_axis_is_last"]},
    "log_softmax": {"nodes": ["LogSoftmaxBackward"], "tests": ["test_softmax_losses.py::test_log_softmax"]},
    "cross_entropy": {"nodes": ["CrossEntropyBackward"],
                      "tests": ["test_softmax_losses.py::test_cross_entropy_class_indices",
                                "test_softmax_losses.py::test_cross_entropy_probabilities",
                                "test_softmax_losses.py::test_cross_entropy_default_reduction_is_mean",
                                "test_softmax_losses.py::test_cross_entropy_noncontiguous_logits",
                                "test_softmax_losses.py::test_cross_entropy_single_sample",
                                "test_softmax_losses.py::test_cross_entropy_sequence_logits",
                                "test_softmax_losses.py::test_cross_entropy_sequence_probabilities_and_slices"]},
    "mse_loss": {"nodes": [],
                 "tests": ["test_softmax_losses.py::test_mse_loss", "test_softmax_losses.py::test_mse_loss_default_reduction_is_mean",
                           "test_softmax_losses.py::test_mse_loss_noncontiguous"]},
    "binary_cross_entropy": {"nodes": ["BceWithLogitsBackward"],
                             "tests": ["test_softmax_losses.py::test_binary_cross_entropy_from_logits",
                                       "test_softmax_losses.py::test_binary_cross_entropy_from_probabilities",
                                       "test_softmax_losses.py::test_binary_cross_entropy_defaults_are_logits_and_mean",
                                       "test_softmax_losses.py::test_binary_cross_entropy_noncontiguous_logits"]},
    # Keras' losses, defined once in C++ (cpp/ops/losses.cpp): composites.
    "loss": {"nodes": [], "tests": ["test_softmax_losses.py::test_loss_op_matches_torch",
                                    "test_softmax_losses.py::test_loss_op_with_sample_weights"]},
    "reduce_loss": {"nodes": [], "tests": ["test_softmax_losses.py::test_reduce_loss_op"]},
    "conv2d": {"nodes": ["Conv2dBackward", "ConvInputGradBackward", "ConvWeightGradBackward"],
               "tests": ["test_nn_ops.py::test_conv2d", "test_nn_ops.py::test_conv2d_asymmetric_padding",
                         "test_nn_ops.py::test_conv2d_noncontiguous", "test_conv_options.py::test_conv2d_options",
                         "test_conv_options.py::test_conv2d_options_without_bias_and_transposed_input"]},
    "conv1d": {"nodes": ["Conv2dBackward"], "tests": ["test_conv_options.py::test_conv1d"]},
    "max_pool2d": {"nodes": ["MaxPool2dBackward", "MaxPool2dScatterBackward"],
                   "tests": ["test_nn_ops.py::test_max_pool2d", "test_nn_ops.py::test_pool_defaults_and_noncontiguous",
                             "test_conv_options.py::test_max_pool2d_options",
                             "test_layers_extra.py::test_global_max_pooling"]},
    "avg_pool2d": {"nodes": ["AvgPool2dBackward", "AvgPool2dScatterBackward"],
                   "tests": ["test_nn_ops.py::test_avg_pool2d", "test_conv_options.py::test_avg_pool2d_options",
                             "test_layers_extra.py::test_global_average_pooling"]},
    "max_pool1d": {"nodes": ["MaxPool2dBackward"], "tests": ["test_conv_options.py::test_pool1d"]},
    "avg_pool1d": {"nodes": ["AvgPool2dBackward"], "tests": ["test_conv_options.py::test_pool1d"]},
    # Fused Transformer pieces (cpp/ops/fused.cpp).
    "bias_gelu": {"nodes": ["BiasGeluBackward"],
                  "tests": ["test_fused_ops.py::test_bias_gelu"]},
    "bias_residual": {"nodes": ["ResidualAddBackward"], "tests": ["test_fused_ops.py::test_bias_residual"]},
    "add_layer_norm": {"nodes": ["ResidualAddBackward", "LayerNormBackward"],
                       "tests": ["test_fused_ops.py::test_add_layer_norm",
                                 "test_fused_ops.py::test_add_layer_norm_optional_parameters"]},
    "layer_norm": {"nodes": ["LayerNormBackward"],
                   "tests": ["test_nn_ops.py::test_layer_norm", "test_nn_ops.py::test_layer_norm_without_some_parameters",
                             "test_nn_ops.py::test_layer_norm_single_feature", "test_nn_ops.py::test_layer_norm_custom_eps"]},
    "batch_norm": {"nodes": ["BatchNormBackward"],
                   "tests": ["test_batchnorm.py::test_batch_norm_training_matches_torch",
                             "test_batchnorm.py::test_batch_norm_inference_matches_torch",
                             "test_batchnorm.py::test_batch_norm_without_some_parameters"]},
    "embedding": {"nodes": ["EmbeddingBackward", "EmbeddingScatterBackward"],
                  "tests": ["test_nn_ops.py::test_embedding", "test_nn_ops.py::test_embedding_noncontiguous_table"]},
    "dropout": {"nodes": ["MulBackward"], "tests": ["test_nn_ops.py::test_dropout_gradcheck_with_fixed_seed"]},
    "scaled_dot_product_attention": {"nodes": ["AttentionBackward"],
                                     "tests": ["test_transformer.py::test_scaled_dot_product_attention",
                                               "test_flash_attention.py::test_fused_attention_gradcheck_and_torch"]},
    "qkv_attention": {"nodes": ["AttentionBackward"],
                      "tests": ["test_qkv_attention.py::test_qkv_attention_gradcheck_and_torch"]},
    # Shapes, joins and indexing (cpp/ops/shape.cpp, join.cpp, select.cpp).
    "reshape": {"nodes": ["ReshapeBackward"], "tests": ["test_layers_extra.py::test_reshape"]},
    "flatten": {"nodes": ["ReshapeBackward"],
                "tests": ["test_nn_ops.py::test_flatten", "test_indexing.py::test_shape_ops_match_torch"]},
    "squeeze": {"nodes": ["ReshapeBackward"],
                "tests": ["test_indexing.py::test_shape_ops_match_torch", "test_issue22_bugs.py::test_squeeze_backward"]},
    "unsqueeze": {"nodes": ["ReshapeBackward"], "tests": ["test_indexing.py::test_shape_ops_match_torch"]},
    "expand": {"nodes": ["ExpandBackward"], "tests": ["test_indexing.py::test_shape_ops_match_torch"]},
    "transpose": {"nodes": ["PermuteBackward"], "tests": ["test_tensor_autograd.py::test_transpose_3d_gradients"]},
    "cat": {"nodes": ["CatBackward"], "tests": ["test_everyday_ops.py::test_cat"]},
    "concatenate": {"nodes": ["CatBackward"], "tests": ["test_everyday_ops.py::test_cat"]},
    "stack": {"nodes": ["CatBackward"], "tests": ["test_everyday_ops.py::test_stack"]},
    "split": {"nodes": ["SliceBackward"], "tests": ["test_everyday_ops.py::test_split_torch_and_numpy_semantics"]},
    "pad": {"nodes": ["PadBackward"], "tests": ["test_everyday_ops.py::test_pad", "test_layers_extra.py::test_zero_padding"]},
    "flip": {"nodes": ["FlipBackward"], "tests": ["test_everyday_ops.py::test_flip"]},
    "tril": {"nodes": ["WhereBackward"], "tests": ["test_everyday_ops.py::test_tril_triu"]},
    "triu": {"nodes": ["WhereBackward"], "tests": ["test_everyday_ops.py::test_tril_triu"]},
    "gather": {"nodes": ["GatherBackward", "GatherScatterBackward"],
               "tests": ["test_everyday_ops.py::test_gather_repeated_indices_accumulate"]},
    "take_along_axis": {"nodes": ["GatherBackward"], "tests": ["test_everyday_ops.py::test_take_along_axis"]},
    "index_select": {"nodes": ["EmbeddingBackward"], "tests": ["test_indexing.py::test_index_select"]},
    # Tensor methods and functions outside st.ops.
    "Tensor.__getitem__": {"nodes": ["SliceBackward", "SliceScatterBackward"],
                           "tests": ["test_tensor_autograd.py::test_slicing_gradients",
                                     "test_tensor_autograd.py::test_view_gradients_flow_to_the_base",
                                     "test_indexing.py::test_gradients", "test_indexing.py::test_gradients_match_torch",
                                     "test_issue22_bugs.py::test_negative_slice_step_2d_gradcheck"]},
    "Tensor.permute": {"nodes": ["PermuteBackward"], "tests": ["test_issue22_bugs.py::test_permute_negative_axes_4d_backward"]},
    "Tensor.contiguous": {"nodes": ["IdentityBackward"],
                          "tests": ["test_issue22_bugs.py::test_negative_slice_step_2d_gradcheck"]},
    "Tensor.astype": {"nodes": ["CastBackward"], "tests": ["test_mixed_precision.py::test_astype_check_op"]},
    "checkpoint": {"nodes": ["CheckpointBackward"],
                   "tests": ["test_transformer.py::test_checkpoint_check_op",
                             "test_higher_order.py::test_checkpoint_passes_the_op_checks"]},
}

# st.ops functions without a gradient, and why.
NOT_DIFFERENTIABLE = {
    "argmax": "returns int64 indices",
    "argmin": "returns int64 indices",
    "eye": "creation from shapes",
    "linspace": "creation from scalars",
    "one_hot": "int64 indices in, a constant out",
}

# Backward nodes no op of OPS produces, and why.
NODES_WITHOUT_OP = {
    "UnaryBackward": "the fallback name of UnaryBackward::name(); each UnaryOp reports its own",
    "SignBackward": "Sign runs only inside backward formulas (unary_raw records no node); its derivative is 0",
    "KfacTapBackward": "an identity in the graph of a Dense/Conv2D layer a KFAC optimizer trains, recording G = E[ggᵀ]; "
                       "test_kfac.py checks the factors, its pass-through gradient and its create_graph against torch",
    "ToDeviceBackward": "Tensor.to between devices: checked on a GPU by test_cuda.py (no float64 on CUDA, so no "
                        "float64 gradcheck)",
}

# Kernels of kernels.def that have no CUDA definition yet, and why.
KERNELS_WITHOUT_CUDA = {}
