// Closes what isa_begin.h opened.
#ifdef STEEPEST_ISA_TARGETED
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
