# frozen_string_literal: true

require "json"
require "open3"
require "rbconfig"
require "tmpdir"

# A name resolver the specs control, for a Ruby child process: a tiny
# LD_PRELOAD library that wraps libc's getaddrinfo. For one host name
# (HOST) it logs each call (one line per call: the caller's pid) and answers
# with the address written in a file - change the file, and the name "moves";
# empty it, and the name does not resolve. Every other name goes to libc.
#
#   resolver = MemcachedReviewResolver.new(dir)
#   resolver.point_at("127.0.0.1")
#   resolver.run_ruby("c = MegaMutex::Native::Client.new([[#{HOST.inspect}, port]], ...); step(c._read('k'))") do |talk|
#     talk.call # => the child's first step (then it goes on)
#   end
#   resolver.resolutions # => getaddrinfo calls for HOST so far
#
# The spec process itself cannot be interposed (libc is bound before any
# library it could load), hence the child.
class MemcachedReviewResolver
  HOST = "mc.review.test"

  SOURCE = <<~C
    #define _GNU_SOURCE
    #include <dlfcn.h>
    #include <fcntl.h>
    #include <netdb.h>
    #include <stdio.h>
    #include <stdlib.h>
    #include <string.h>
    #include <unistd.h>

    typedef int (*gai_fn)(const char *, const char *, const struct addrinfo *, struct addrinfo **);

    int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints, struct addrinfo **res) {
      gai_fn real = (gai_fn) dlsym(RTLD_NEXT, "getaddrinfo");
      const char *host = getenv("MMR_HOST"), *log = getenv("MMR_LOG"), *file = getenv("MMR_ADDRESS_FILE");
      if (node == NULL || host == NULL || strcmp(node, host) != 0 || log == NULL || file == NULL)
        return real(node, service, hints, res);
      int fd = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
      if (fd >= 0) {
        char line[32];
        int n = snprintf(line, sizeof line, "%d\\n", (int) getpid());
        if (write(fd, line, (size_t) n) != n) abort();
        close(fd);
      }
      char addr[64] = "";
      FILE *f = fopen(file, "re");
      if (f != NULL) {
        if (fgets(addr, sizeof addr, f) == NULL) addr[0] = '\\0';
        fclose(f);
      }
      addr[strcspn(addr, " \\r\\n")] = '\\0';
      if (addr[0] == '\\0') return EAI_NONAME;
      struct addrinfo numeric = hints != NULL ? *hints : (struct addrinfo) {0};
      numeric.ai_flags |= AI_NUMERICHOST;
      return real(addr, service, &numeric, res);
    }
  C

  attr_reader :dir

  # @param dir [String] a directory of the spec's own (the library, the log, the address)
  def initialize(dir)
    @dir = dir
    @library = File.join(dir, "resolver.so")
    File.write(File.join(dir, "resolver.c"), SOURCE)
    _out, err, status = Open3.capture3("cc", "-shared", "-fPIC", "-Wall", "-o", @library, File.join(dir, "resolver.c"), "-ldl")
    raise "could not build the resolver shim: #{err}" unless status.success?

    point_at("")
  end

  # The address HOST resolves to from now on ("" : it does not resolve).
  def point_at(address)
    File.write(address_file, address)
  end

  # getaddrinfo calls for HOST so far (by any process run here).
  def resolutions
    File.exist?(log) ? File.readlines(log).size : 0
  end

  # Runs `script` in a Ruby child with the gem loaded and the resolver in
  # place. The script reports by `step(x)`: prints x as JSON and waits. The
  # block gets `talk`: each call lets the child go on from the step it
  # waits at (if any) and returns its next step's x - so what the block
  # does between two calls happens while the child waits.
  def run_ruby(script, timeout: 60)
    env = { "LD_PRELOAD" => @library, "MMR_HOST" => HOST, "MMR_LOG" => log, "MMR_ADDRESS_FILE" => address_file }
    prelude = "$LOAD_PATH.unshift(#{File.join(SpecHelpers::ROOT, 'lib').inspect}); require 'mega_mutex'; " \
              "require 'json'; $stdout.sync = true; def step(x); puts JSON.generate(x); $stdin.gets; end; "
    Open3.popen3(env, "timeout", timeout.to_s, RbConfig.ruby, "-e", prelude + script, chdir: SpecHelpers::ROOT) do |i, o, e, t|
      waiting = false # the child waits at a step for us to go on
      talk = lambda do
        i.puts if waiting
        line = o.gets or raise "child ended (#{t.value}): #{e.read}"
        waiting = true
        JSON.parse(line)
      end
      yield talk
      i.close
      raise "child failed (#{t.value}): #{e.read}" unless t.value.success?
    end
  end

  private

  def log
    File.join(@dir, "resolutions.log")
  end

  def address_file
    File.join(@dir, "address")
  end
end
