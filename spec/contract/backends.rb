# frozen_string_literal: true

require "logger"
require "stringio"

# What the contract suite needs to know about a backend: how to configure it,
# what it supports, and how to take a lease away from its holder behind its
# back. One descriptor per backend, each in its own file under
# spec/contract/backends/ (loaded at the end of this one); spec/contract_spec.rb
# runs the contract against every registered backend. A new store (MariaDB's
# :mysql, the :quorum) joins with one file there.
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

    # @return [Array<Symbol>] the registered backends, in the order registered
    def names
      @registry.keys
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

# The descriptors, memcached and memory first, then the others by name.
first = %w[memcached memory].map { |name| File.join(__dir__, "backends", "#{name}.rb") }
(first + (Dir[File.join(__dir__, "backends", "*.rb")].sort - first)).each { |file| require file }
