// bench/streams: K cloned openvino.genai Text2ImagePipelines in one process, one thread each.
//
// Text2ImagePipeline::clone() makes a new infer request on each compiled model and a new
// scheduler; the compiled models (and so their weights) are shared. genai's Python bindings
// (2026.4) do not expose clone(), so this is C++, linked to the wheel's libopenvino_genai.
// Protocol with bench/streams/run.py, like child.py: compile, clone, warm up every clone,
// print "ready", wait for "go" on stdin, render, print one JSON line, wait for "exit".
//
// usage: clone MODEL_DIR WIDTH HEIGHT STEPS GUIDANCE CLONES IMAGES THREADS STREAMS PINNING
//              [KEY=VALUE ...]
//   THREADS, STREAMS: INFERENCE_NUM_THREADS, NUM_STREAMS (0: the plugin's default);
//   PINNING: 1/0 ENABLE_CPU_PINNING, -1 the default; KEY=VALUE: more compile properties.
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "openvino/genai/image_generation/text2image_pipeline.hpp"

using clock_type = std::chrono::steady_clock;

static double seconds_since(clock_type::time_point t0) {
    return std::chrono::duration<double>(clock_type::now() - t0).count();
}

static void render(ov::genai::Text2ImagePipeline& pipe, int width, int height, int steps,
                   float guidance, int seed) {
    pipe.generate("a red fox in the snow", ov::genai::width(width), ov::genai::height(height),
                  ov::genai::num_inference_steps(steps), ov::genai::guidance_scale(guidance),
                  ov::genai::generator(std::make_shared<ov::genai::CppStdGenerator>(seed)));
}

int main(int argc, char* argv[]) try {
    if (argc < 11) {
        std::cerr << "usage: clone MODEL_DIR WIDTH HEIGHT STEPS GUIDANCE CLONES IMAGES THREADS "
                     "STREAMS PINNING [KEY=VALUE ...]\n";
        return 2;
    }
    const std::string model_dir = argv[1];
    const int width = std::atoi(argv[2]), height = std::atoi(argv[3]), steps = std::atoi(argv[4]);
    const float guidance = std::strtof(argv[5], nullptr);
    const int clones = std::atoi(argv[6]), images = std::atoi(argv[7]);
    const int threads = std::atoi(argv[8]), streams = std::atoi(argv[9]);
    const int pinning = std::atoi(argv[10]);

    ov::AnyMap config;
    if (threads > 0) config["INFERENCE_NUM_THREADS"] = threads;
    if (streams > 0) config["NUM_STREAMS"] = streams;
    if (pinning >= 0) config["ENABLE_CPU_PINNING"] = pinning == 1;
    for (int i = 11; i < argc; ++i) {
        const std::string item = argv[i];
        const auto eq = item.find('=');
        if (eq == std::string::npos) {
            std::cerr << "clone: " << item << " is not KEY=VALUE\n";
            return 2;
        }
        config[item.substr(0, eq)] = item.substr(eq + 1);
    }

    auto t0 = clock_type::now();
    std::vector<ov::genai::Text2ImagePipeline> pipes;
    pipes.emplace_back(model_dir);
    // As worker/render/pipeline.py: batch 1, the static size, guidance compiled in.
    pipes.back().reshape(1, height, width, guidance);
    pipes.back().compile("CPU", config);
    const double compile_s = seconds_since(t0);
    t0 = clock_type::now();
    for (int i = 1; i < clones; ++i) pipes.emplace_back(pipes.front().clone());
    const double clone_s = seconds_since(t0);

    auto run_all = [&](int per_clone, int seed_base, std::vector<std::vector<double>>* latencies) {
        std::vector<std::thread> workers;
        for (int c = 0; c < clones; ++c) {
            workers.emplace_back([&, c]() {
                for (int i = 0; i < per_clone; ++i) {
                    auto start = clock_type::now();
                    render(pipes[c], width, height, steps, guidance, seed_base + c * 1000 + i);
                    if (latencies) (*latencies)[c].push_back(seconds_since(start));
                }
            });
        }
        for (auto& w : workers) w.join();
    };

    run_all(1, 0, nullptr);  // warm-up: one image per clone, at once
    std::cout << "ready" << std::endl;
    std::string line;
    if (!std::getline(std::cin, line) || line != "go") return 3;

    std::vector<std::vector<double>> latencies(clones);
    t0 = clock_type::now();
    run_all(images, 1, &latencies);
    const double wall_s = seconds_since(t0);

    std::ostringstream out;
    out << "{\"compile_s\": " << compile_s << ", \"clone_s\": " << clone_s
        << ", \"wall_s\": " << wall_s << ", \"latencies_s\": [";
    for (int c = 0; c < clones; ++c) {
        out << (c ? ", [" : "[");
        for (size_t i = 0; i < latencies[c].size(); ++i) out << (i ? ", " : "") << latencies[c][i];
        out << "]";
    }
    out << "]}";
    std::cout << out.str() << std::endl;
    std::getline(std::cin, line);  // "exit": the parent reads our memory first
    return 0;
} catch (const std::exception& e) {
    std::cerr << "clone: " << e.what() << "\n";
    return 1;
}
