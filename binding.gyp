{
  "targets": [
    {
      "target_name": "vfio_native",
      "sources": [
        "native/addon.cc",
        "native/common.cc",
        "native/io.cc",
        "native/buffers.cc",
        "native/heap.cc",
        "native/clock.cc",
        "native/wait.cc",
        "native/vfio.cc",
        "native/mapping.cc",
        "native/layout.cc",
        "native/dma.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=9", "NAPI_CPP_EXCEPTIONS", "_GNU_SOURCE"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    }
  ]
}
