# frozen_string_literal: true

# Helpers shared by the specs.
module SpecHelpers
  class << self
    attr_accessor :memcached
  end

  ROOT = File.expand_path("../..", __dir__)

  def memcached
    SpecHelpers.memcached
  end

  # Waits until the block is truthy, polling; fails after `within` seconds.
  def wait_for(within: 5, every: 0.005, message: "condition")
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + within
    loop do
      result = yield
      return result if result
      raise "timed out after #{within}s waiting for #{message}" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

      sleep every
    end
  end

  def monotonic
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  # Runs a Ruby script in a child process with the gem loaded and the same
  # memcached/namespace; returns [stdout, stderr, status].
  def run_ruby(script, env: {}, timeout: 60)
    full_env = {
      "MEMCACHE_SERVERS" => (MegaMutex.configuration.memcache_servers.join(",")),
      "MM_NAMESPACE" => MegaMutex.configuration.namespace
    }.merge(env)
    prelude = "$LOAD_PATH.unshift(#{File.join(ROOT, 'lib').inspect}); require 'mega_mutex'; " \
              "MegaMutex.configure { |c| c.namespace = ENV['MM_NAMESPACE'] };"
    Open3.capture3(full_env, RbConfig.ruby, "-e", prelude + script, chdir: ROOT)
  end

  # The start of a script for a child process: the gem loaded and
  # configured with `settings` (Configuration attributes) in this example's
  # namespace.
  # @return [String]
  def configured_script(**settings)
    <<~RUBY
      $LOAD_PATH.unshift(#{File.join(ROOT, 'lib').inspect})
      require "mega_mutex"
      MegaMutex.configure do |c|
        #{settings.map { |name, value| "c.#{name} = #{value.inspect}" }.join("\n  ")}
        c.namespace = #{@namespace.inspect}
      end
    RUBY
  end

  # A Lock on `id` taken by another thread (so this thread is not reentrant
  # on it); unlock it from anywhere.
  def held_elsewhere(id, **options)
    Thread.new { MegaMutex::Lock.new(id, **options).tap(&:lock) }.value
  end

  # The memcached key for `id` under the current configuration.
  def key_for(id)
    MegaMutex::Key.for(MegaMutex.configuration.namespace, id)
  end
end
