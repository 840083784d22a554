# frozen_string_literal: true

require "logger"
require "stringio"

# What the contract suite needs to know about a backend: how to configure it,
# what it supports, and how to take a lease away from its holder behind its
# back. One descriptor per backend, registered here; spec/contract_spec.rb
# runs the contract against it with one line:
#
#   it_behaves_like "a MegaMutex backend", :memcached
#
# A new store (MariaDB's :mysql, the :quorum) joins with a descriptor below
# and that line.
class ContractBackend
  # @return [Symbol] the backend's name (config.backend)
  attr_reader :name

  @registry = {}

  class << self
    # Registers a backend.
    # @param name [Symbol]
    # @param processes [Boolean] true when locks exclude across processes
    #   (fork): false for a store that lives in one process
    # @param configure [Proc] called with the Configuration inside MegaMutex.configure
    # @param lose_lease [Proc] called with a held Lock: removes its lock from
    #   the store as a crash, restart, eviction or flush would (for a session
    #   store: kills the holder's session), so that the holder must find out
    # @param before [Proc, nil] run before each example (e.g. clear a table)
    # @param after [Proc, nil] run after each example
    # @return [ContractBackend]
    def register(name, processes:, configure:, lose_lease:, before: nil, after: nil)
      @registry[name] = new(name, processes, configure, lose_lease, before, after)
    end

    # @param name [Symbol]
    # @return [ContractBackend]
    def [](name)
      @registry.fetch(name) { raise ArgumentError, "no contract backend #{name.inspect} (registered: #{@registry.keys.inspect})" }
    end
  end

  def initialize(name, processes, configure, lose_lease, before, after)
    @name = name
    @processes = processes
    @configure = configure
    @lose_lease = lose_lease
    @before = before
    @after = after
  end

  # @return [Boolean] true when locks exclude across processes
  def processes?
    @processes
  end

  # Puts the backend in force, with `settings` (Configuration attributes) on top.
  def use(**settings)
    MegaMutex.configure do |c|
      @configure.call(c)
      settings.each { |setting, value| c.public_send("#{setting}=", value) }
    end
  end

  # Takes `lock`'s lease away behind its holder's back.
  def lose_lease(lock)
    @lose_lease.call(lock)
  end

  # Runs the backend's before hook.
  def before_example
    @before&.call
  end

  # Runs the backend's after hook.
  def after_example
    @after&.call
  end

  # @return [String]
  def to_s
    name.inspect
  end
end

ContractBackend.register(
  :memcached,
  processes: true,
  configure: lambda { |c|
    c.backend = :memcached
    c.memcache_servers = [SpecHelpers.memcached.address]
  },
  # As a flush_all, an eviction or a restart would.
  lose_lease: ->(lock) { SpecHelpers.memcached.delete(lock.key) or raise "#{lock.key} was not in memcached" }
)

ContractBackend.register(
  :memory,
  processes: false, # one table per process: the memory backend is no cross-process lock
  configure: ->(c) { c.backend = :memory },
  # The only lock the example holds goes, as after a memcached restart.
  lose_lease: lambda { |lock|
    raise "#{lock.key} was not in the memory table" unless MegaMutex::MemoryStore.locks.key?(lock.key)

    MegaMutex::MemoryStore.reset!
  },
  before: -> { MegaMutex::MemoryStore.reset! },
  after: -> { MegaMutex::MemoryStore.reset! }
)
