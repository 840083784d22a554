# frozen_string_literal: true

require "rails/railtie"
require "mega_mutex/active_record_database"

module MegaMutex
  # Configures MegaMutex from a Rails application's config. Loaded by
  # `require "mega_mutex"` when Rails::Railtie is defined (Bundler.require in
  # config/application.rb does this); require "mega_mutex/railtie" yourself
  # if mega_mutex is loaded before Rails.
  #
  # Every {Configuration} setting may be given as `config.mega_mutex.NAME`;
  # they are applied through {MegaMutex.configure} before the application's
  # config/initializers run, so a `MegaMutex.configure` block in an
  # initializer sees them and wins over them. The logger defaults to
  # Rails.logger unless `config.mega_mutex.logger` is set (nil silences it).
  # A bad or unknown setting raises ArgumentError naming it, at boot.
  #
  # @example config/application.rb
  #   config.mega_mutex.memcache_servers = ["mc1:11211", "mc2:11211"]
  #   config.mega_mutex.namespace = "myapp_#{Rails.env}"
  #   config.mega_mutex.lock_ttl = 60
  #
  # @example MariaDB: the application's own database (mysql2 or trilogy adapter)
  #   config.mega_mutex.backend = :mysql     # the primary database of config/database.yml
  class Railtie < ::Rails::Railtie
    config.mega_mutex = ActiveSupport::OrderedOptions.new

    initializer "mega_mutex.configure", before: :load_config_initializers do |app|
      MegaMutex::Railtie.apply(app.config.mega_mutex, logger: ::Rails.logger)
    end

    class << self
      # The settings {Configuration} has a setter for, e.g. :namespace.
      # @return [Array<Symbol>]
      def settings
        Configuration.public_instance_methods(false)
                     .map(&:to_s).grep(/\A[a-z_]\w*=\z/).map { |name| name.chomp("=").to_sym }.sort
      end

      # Applies `options` through {MegaMutex.configure}; sets `logger` as the
      # logger unless `options` names one or one is configured already.
      # @param options [Hash, ActiveSupport::OrderedOptions] setting => value
      # @param logger [#debug, #info, #warn, #error, nil] the default logger (Rails.logger)
      # @return [Configuration] the configuration now in force
      # @raise [ArgumentError] naming an unknown or bad setting
      def apply(options, logger: nil)
        known = settings
        given = options.to_h.transform_keys(&:to_sym)
        unknown = given.keys - known
        unless unknown.empty?
          raise ArgumentError, "config.mega_mutex: unknown setting(s) #{unknown.map(&:inspect).join(', ')} " \
                               "(known: #{known.map(&:inspect).join(', ')})"
        end

        MegaMutex.configure do |config|
          given.each do |name, value|
            config.public_send(:"#{name}=", value)
          rescue ArgumentError => e
            raise ArgumentError, "config.mega_mutex.#{name}: #{e.message}"
          end
          config.logger = logger if !given.key?(:logger) && config.logger.nil? && !logger.nil?
          use_active_record_database(config)
          begin
            config.validate!
          rescue ArgumentError => e
            raise ArgumentError, "config.mega_mutex: #{e.message}"
          end
        end
      end

      # Adapters whose database settings backend :mysql can use.
      MYSQL_ADAPTERS = ActiveRecordDatabase::ADAPTERS

      # With backend :mysql and no server given (no mysql_url, no
      # MEGA_MUTEX_MYSQL_URL), the application's own database: its settings
      # for this environment (config/database.yml's primary database, with
      # its url and DATABASE_URL as ActiveRecord resolves them when it is
      # loaded), when that is MariaDB/MySQL (mysql2 or trilogy), read as the
      # adapter reads them (see MegaMutex::ActiveRecordDatabase). MegaMutex opens
      # sessions of its own to it, never ActiveRecord's connections.
      # @param config [Configuration] being configured
      # @return [void]
      def use_active_record_database(config)
        return unless config.backend == :mysql && config.mysql_settings.nil?
        return unless ENV.fetch("MEGA_MUTEX_MYSQL_URL", "").empty?

        settings = mysql_database_settings
        config.mysql_settings = settings if settings
      end

      # The primary database's settings for this environment, if MySQL.
      # @param all [Hash, nil] database.yml as Rails reads it (default: the application's)
      # @param env [String] the environment
      # @return [Hash{Symbol => Object}, nil] host, port, socket, username,
      #   password, database (see MegaMutex::ActiveRecordDatabase.settings)
      def mysql_database_settings(all = application_databases, env = ::Rails.env.to_s)
        entry = ActiveRecordDatabase.primary_entry(all, env)
        entry && ActiveRecordDatabase.settings(entry, adapter_required: true)
      end

      private

      def application_databases
        ::Rails.application&.config&.database_configuration
      rescue StandardError
        nil # no config/database.yml: nothing to take
      end
    end
  end
end

# Loaded on its own (before mega_mutex): bring in the rest of the gem.
require "mega_mutex" unless defined?(MegaMutex.configure)
